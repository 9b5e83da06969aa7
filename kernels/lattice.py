"""Lattice neighbourhoods and vectorised conflict resolution.

Voxels are addressed by their flat (C-order) index into the lattice array. These kernels are pure functions of
their array arguments and work on NumPy and CuPy alike.
"""

from __future__ import annotations

import itertools

import numpy as np

from kernels._xp import array_namespace

__all__ = [
    "Stencil",
    "box_sum",
    "compact",
    "cube_offsets",
    "moore_offsets",
    "neighbours",
    "resolve_capacity",
    "resolve_conflicts",
    "scatter_count",
    "window_sum_at",
]


def moore_offsets(ndim: int) -> np.ndarray:
    """Coordinate offsets of the Moore neighbourhood (8 in 2-D, 26 in 3-D), shape ``(K, ndim)``, int64."""
    offs = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    return np.asarray(offs, dtype=np.int64)


def cube_offsets(ndim: int, radius: int) -> np.ndarray:
    """Offsets of the cube of half-width ``radius`` (the centre included), shape ``((2r+1)**ndim, ndim)``."""
    r = int(radius)
    return np.asarray(list(itertools.product(range(-r, r + 1), repeat=ndim)), dtype=np.int64).reshape(-1, ndim)


def window_sum_at(values, voxels, shape, offsets):
    """Sum of ``values`` over the window ``offsets`` around each of ``voxels`` (voxels outside count 0).

    Cheaper than :func:`box_sum` over the whole lattice when only a few voxels are asked about.

    Parameters
    ----------
    values : array, shape ``(size,)``
        Flat per-voxel values.
    voxels : int array, shape ``(N,)``
        Flat voxel indices to evaluate.
    shape : tuple of int
        Lattice shape.
    offsets : int array, shape ``(K, ndim)``
        Window offsets (e.g. :func:`cube_offsets`), on the same backend as ``voxels``.

    Returns
    -------
    array, shape ``(N,)``
    """
    xp = array_namespace(values, voxels)
    flat, inside = neighbours(voxels, shape, offsets)
    return xp.where(inside, values[flat], 0).sum(axis=1)


def neighbours(voxels, shape, offsets):
    """Flat indices of each voxel's neighbours and whether they lie inside the lattice.

    Parameters
    ----------
    voxels : int array, shape ``(N,)``
        Flat voxel indices.
    shape : tuple of int
        Lattice shape.
    offsets : int array, shape ``(K, ndim)``
        Coordinate offsets (e.g. :func:`moore_offsets`), on the same backend as ``voxels``.

    Returns
    -------
    flat : int64 array, shape ``(N, K)``
        Flat neighbour indices; entries outside the lattice are clamped to 0 and must be masked.
    inside : bool array, shape ``(N, K)``
        True where the neighbour lies inside the lattice.
    """
    xp = array_namespace(voxels, offsets)
    # Work on flat indices: one coordinate per axis per voxel (N), never an (N, K, ndim) array.
    strides = np.cumprod((1,) + tuple(int(n) for n in shape[:0:-1]))[::-1].copy()  # C-order strides
    flat = voxels[:, None] + (offsets * xp.asarray(strides)).sum(axis=1)[None, :]
    inside = None
    rest = voxels
    for axis, n in enumerate(shape):
        coord = rest // int(strides[axis])
        rest = rest - coord * int(strides[axis])
        c = coord[:, None] + offsets[None, :, axis]
        ok = (c >= 0) & (c < n)
        inside = ok if inside is None else inside & ok
    flat = xp.where(inside, flat, 0)
    return flat, inside


class Stencil:
    """A fixed neighbourhood on a lattice, for repeated gathers around many voxels.

    :func:`neighbours` decodes every voxel's coordinates to find which neighbours fall outside the lattice. A
    stencil instead classes each voxel once by how close it lies to each face (at most ``radius`` voxels count);
    voxels of one class share the same neighbour offsets and the same inside mask, kept in two small tables. A
    gather is then two table lookups and an add, with no branch and no host synchronisation.

    Results are neighbour-major, ``(K, N)``: one contiguous row per neighbour, so a reduction over the
    neighbourhood (a sum, a maximum, a running sum) is K elementwise operations on length-N vectors, far faster
    on NumPy than reducing a short trailing axis.

    Parameters
    ----------
    shape : tuple of int
        Lattice shape.
    offsets : int array-like, shape ``(K, ndim)``
        Coordinate offsets on the host (e.g. :func:`moore_offsets`; may include the centre ``0``).
    xp : module
        Array module (``numpy`` or ``cupy``) the stencil works on.
    """

    def __init__(self, shape, offsets, xp):
        host = np.asarray(offsets, dtype=np.int64).reshape(-1, len(shape))
        self.shape = tuple(int(n) for n in shape)
        self.xp = xp
        self.offsets = xp.asarray(host)
        self.radius = r = int(np.abs(host).max()) if host.size else 0
        strides = np.cumprod((1,) + self.shape[:0:-1])[::-1]
        # Per axis, a voxel's class is (distance to the low face, distance to the high face), each capped at r.
        per_axis = (r + 1) ** 2
        n_classes = per_axis ** len(self.shape)
        cls = np.zeros((), dtype=np.int64)
        for n in self.shape:
            c = np.arange(n)
            axis_class = np.minimum(c, r) * (r + 1) + np.minimum(n - 1 - c, r)
            cls = cls[..., None] * per_axis + axis_class
        self.voxel_class = xp.asarray(cls.reshape(-1).astype(np.uint8 if n_classes <= 256 else np.int32))
        codes = np.arange(n_classes)
        inside = np.ones((n_classes, host.shape[0]), dtype=bool)
        for axis in reversed(range(len(self.shape))):
            low, high = divmod(codes % per_axis, r + 1)
            o = host[:, axis]
            inside &= (o[None, :] >= -low[:, None]) & (o[None, :] <= high[:, None])
            codes = codes // per_axis
        delta = host @ strides
        self.class_inside = xp.asarray(np.ascontiguousarray(inside.T))  # (K, classes)
        self.class_delta = xp.asarray(np.ascontiguousarray(np.where(inside, delta[None, :], 0).T))  # outside: 0
        # Voxels at least ``r`` from every face (most of them) have every neighbour inside: plain offsets.
        self.interior_class = sum(r * (r + 2) * per_axis**k for k in range(len(self.shape)))
        self.delta = xp.asarray(delta)

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def neighbours(self, voxels):
        """Flat neighbour indices and the inside mask, neighbour-major.

        Parameters
        ----------
        voxels : int array, shape ``(N,)``
            Flat voxel indices.

        Returns
        -------
        flat : int64 array, shape ``(K, N)``
            ``flat[k, i]`` is neighbour ``k`` of ``voxels[i]``; entries outside the lattice hold the voxel itself
            and must be masked.
        inside : bool array, shape ``(K, N)``
        """
        cls = self.voxel_class.take(voxels)
        if self.xp is not np:  # one branch-free gather kernel each; no host synchronisation
            return self._from_tables(voxels, cls)
        # NumPy: a broadcast add for all, the class tables only for the few voxels near a face (3x faster).
        flat = voxels[None, :] + self.delta[:, None]
        inside = np.ones(flat.shape, dtype=bool)
        edge = np.flatnonzero(cls != self.interior_class)
        if edge.shape[0]:
            flat[:, edge], inside[:, edge] = self._from_tables(voxels.take(edge), cls.take(edge))
        return flat, inside

    def _from_tables(self, voxels, cls):
        """:meth:`neighbours` from the per-class tables (any voxel; ``cls`` its class)."""
        return voxels[None, :] + self.class_delta.take(cls, axis=1), self.class_inside.take(cls, axis=1)

    def window_sum(self, values, voxels):
        """Sum of flat ``values`` over the stencil around each of ``voxels`` (outside counts 0), shape ``(N,)``."""
        flat, inside = self.neighbours(voxels)
        return self.xp.where(inside, values.take(flat), 0).sum(axis=0)


def resolve_conflicts(targets, priority, size: int | None = None):
    """Pick one winner per target among agents that want the same voxel, by highest priority.

    The outcome depends only on the priorities, not on the order of the arrays, so it is the same whatever
    order agents are stored in.

    Parameters
    ----------
    targets : int array, shape ``(N,)``
        The voxel each candidate wants.
    priority : float array, shape ``(N,)``
        Random priorities; the highest wins each voxel.
    size : int, optional
        A bound on the voxel indices (the lattice size); without it the largest target is read, a host sync.

    Returns
    -------
    bool array, shape ``(N,)``
        True for each candidate that won its voxel.
    """
    xp = array_namespace(targets, priority)
    if targets.shape[0] == 0:
        return xp.zeros(0, dtype=bool)
    return _admit(targets, priority, xp.ones(int(targets.max()) + 1 if size is None else size, dtype=np.int64), xp)


def scatter_count(voxels, size: int, weights=None, dtype=np.float64):
    """Sum ``weights`` (or count ones) per voxel: a dense array of length ``size`` (``bincount``).

    Counts are exact, hence identical on every run and backend. Float ``weights`` are summed in index order on
    NumPy but with atomic adds in no fixed order on CuPy, so their last bits may differ between GPU runs; model
    rules that must reproduce bit for bit use ordered window sums or integer scatters instead.
    """
    xp = array_namespace(voxels, weights)
    out = xp.bincount(voxels, weights=weights, minlength=size)
    return out.astype(dtype, copy=False)


def compact(values, mask, count: int):
    """``values[mask]`` (both flattened), given its length ``count`` (the mask's number of true entries).

    On a GPU the entries are scattered to their ranks (a cumulative sum of the mask), so no host sync reads the
    mask's size; the result is the same array, in the same order.
    """
    xp = array_namespace(values, mask)
    values, mask = values.reshape(-1), mask.reshape(-1)
    if xp is np:
        return values[mask]
    slot = xp.where(mask, xp.cumsum(mask) - 1, count)  # the rest go to one spare entry, dropped
    out = xp.empty(count + 1, dtype=values.dtype)
    out[slot] = values
    return out[:count]


def resolve_capacity(targets, priority, slots):
    """Admit candidates to voxels with limited free slots, highest priority first.

    Generalises :func:`resolve_conflicts` to voxels that hold up to ``slots[v]`` newcomers: within each target
    voxel the candidates are ranked by descending priority and the first ``slots[v]`` win. The outcome depends
    only on the priorities, not on array order.

    Parameters
    ----------
    targets : int array, shape ``(N,)``
        The voxel each candidate wants (flat index).
    priority : float array, shape ``(N,)``
        Random priorities.
    slots : int array, shape ``(size,)``
        Free places per voxel (negative values count as 0).

    Returns
    -------
    bool array, shape ``(N,)``
        True for each admitted candidate.
    """
    xp = array_namespace(targets, priority, slots)
    if targets.shape[0] == 0:
        return xp.zeros(0, dtype=bool)
    return _admit(targets, priority, slots, xp)


def _admit(targets, priority, slots, xp):
    """Shared core of :func:`resolve_conflicts` and :func:`resolve_capacity`.

    Candidates whose voxel has at least as many free slots as requests are admitted outright; only the contested
    voxels' candidates are sorted (by voxel, then descending priority) and ranked, usually a small minority.
    """
    # A scatter-add, not bincount: CuPy's bincount reads the input's minimum and maximum on the host.
    demand = xp.zeros(slots.shape[0], dtype=np.int32)
    xp.add.at(demand, targets, np.int32(1))
    won = demand[targets] <= slots[targets]
    contested = xp.nonzero(~won)[0]
    n = contested.shape[0]
    if n == 0:
        return won
    sub_targets = targets[contested]
    order = xp.lexsort(xp.stack([-priority[contested], sub_targets]))
    sorted_targets = sub_targets[order]
    first = xp.ones(n, dtype=bool)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    position = xp.arange(n)
    group_id = xp.cumsum(first) - 1
    rank = position - position[first][group_id]
    won[contested[order]] = rank < slots[sorted_targets]
    return won


def box_sum(grid, radius: int, dtype=np.float64):
    """Sum of ``grid`` over the cube of half-width ``radius`` voxels around each voxel (zero outside).

    Separable: one 1-D window sum per axis, by shifted slices for small radii and by cumulative sums for large
    ones, so the cost never grows faster than the radius. Boolean and integer grids are summed exactly, in
    ``dtype`` when that is an integer type (the caller guarantees the sums fit: a boolean grid's sums are at most
    ``(2 radius + 1)**ndim``), otherwise in int32.

    Parameters
    ----------
    grid : array, shape ``(nx, ny[, nz])``
        Values to sum.
    radius : int
        Half-width in voxels (Chebyshev distance); 0 returns a copy.
    dtype : numpy dtype
        Type of the result (float64 by default).

    Returns
    -------
    array of the same shape, of type ``dtype``
    """
    xp = array_namespace(grid)
    dtype = np.dtype(dtype)
    exact = grid.dtype == bool or np.issubdtype(np.dtype(str(grid.dtype)), np.integer)
    accumulate = (dtype if np.issubdtype(dtype, np.integer) else np.dtype(np.int32)) if exact else np.float64
    out = grid.astype(accumulate)
    r = int(radius)
    for axis in range(out.ndim if r > 0 else 0):
        n = out.shape[axis]
        widths = [(0, 0)] * out.ndim
        sl = [slice(None)] * out.ndim
        if r <= 4:
            acc = out.copy()
            for k in range(1, min(r, n - 1) + 1):
                dst, src = list(sl), list(sl)
                dst[axis], src[axis] = slice(k, None), slice(0, n - k)
                acc[tuple(dst)] += out[tuple(src)]
                dst[axis], src[axis] = slice(0, n - k), slice(k, None)
                acc[tuple(dst)] += out[tuple(src)]
            out = acc
        else:
            # Pad r zeros on both sides and one leading zero: each window sum is a difference of two slices.
            widths[axis] = (r + 1, r)
            c = xp.cumsum(xp.pad(out, widths), axis=axis)
            hi, lo = list(sl), list(sl)
            hi[axis] = slice(2 * r + 1, None)
            lo[axis] = slice(0, n)
            out = c[tuple(hi)] - c[tuple(lo)]
    return out.astype(dtype, copy=False)
