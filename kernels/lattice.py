"""Lattice neighbourhoods and vectorised conflict resolution.

Voxels are addressed by their flat (C-order) index into the lattice array. These kernels are pure functions of
their array arguments and work on NumPy and CuPy alike.
"""

from __future__ import annotations

import itertools

import numpy as np

from kernels._xp import array_namespace

__all__ = ["box_sum", "moore_offsets", "neighbours", "resolve_capacity", "resolve_conflicts", "scatter_count"]


def moore_offsets(ndim: int) -> np.ndarray:
    """Coordinate offsets of the Moore neighbourhood (8 in 2-D, 26 in 3-D), shape ``(K, ndim)``, int64."""
    offs = [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]
    return np.asarray(offs, dtype=np.int64)


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
    coords = xp.stack(xp.unravel_index(voxels, shape), axis=1)  # (N, ndim)
    nbr = coords[:, None, :] + offsets[None, :, :]  # (N, K, ndim)
    inside = xp.ones(nbr.shape[:2], dtype=bool)
    flat = xp.zeros(nbr.shape[:2], dtype=np.int64)
    for axis, n in enumerate(shape):
        c = nbr[:, :, axis]
        inside &= (c >= 0) & (c < n)
        flat = flat * n + xp.clip(c, 0, n - 1)
    flat = xp.where(inside, flat, 0)
    return flat, inside


def resolve_conflicts(targets, priority):
    """Pick one winner per target among agents that want the same voxel, by highest priority.

    The outcome depends only on the priorities, not on the order of the arrays, so it is the same whatever
    order agents are stored in.

    Parameters
    ----------
    targets : int array, shape ``(N,)``
        The voxel each candidate wants.
    priority : float array, shape ``(N,)``
        Random priorities; the highest wins each voxel.

    Returns
    -------
    bool array, shape ``(N,)``
        True for each candidate that won its voxel.
    """
    xp = array_namespace(targets, priority)
    won = xp.zeros(targets.shape[0], dtype=bool)
    if targets.shape[0] == 0:
        return won
    order = xp.lexsort(xp.stack([-priority, targets]))  # by target, then descending priority
    sorted_targets = targets[order]
    first = xp.ones(order.shape[0], dtype=bool)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    won[order[first]] = True
    return won


def scatter_count(voxels, size: int, weights=None, dtype=np.float64):
    """Sum ``weights`` (or count ones) per voxel: a dense array of length ``size``.

    A scatter-add that is deterministic and identical on NumPy and CuPy (``bincount``).
    """
    xp = array_namespace(voxels, weights)
    out = xp.bincount(voxels, weights=weights, minlength=size)
    return out.astype(dtype, copy=False)


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
    n = targets.shape[0]
    won = xp.zeros(n, dtype=bool)
    if n == 0:
        return won
    order = xp.lexsort(xp.stack([-priority, targets]))
    sorted_targets = targets[order]
    first = xp.ones(n, dtype=bool)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    position = xp.arange(n)
    group_id = xp.cumsum(first) - 1
    rank = position - position[first][group_id]
    won[order] = rank < slots[sorted_targets]
    return won


def box_sum(grid, radius: int):
    """Sum of ``grid`` over the cube of half-width ``radius`` voxels around each voxel (zero outside).

    Separable: one 1-D window sum per axis, by shifted slices for small radii and by cumulative sums for large
    ones, so the cost never grows faster than the radius. Boolean and integer grids are summed exactly in int64.

    Parameters
    ----------
    grid : array, shape ``(nx, ny[, nz])``
        Values to sum.
    radius : int
        Half-width in voxels (Chebyshev distance); 0 returns a float64 copy.

    Returns
    -------
    float64 array of the same shape
    """
    xp = array_namespace(grid)
    exact = grid.dtype == bool or np.issubdtype(np.dtype(str(grid.dtype)), np.integer)
    out = grid.astype(np.int64 if exact else np.float64)
    r = int(radius)
    for axis in range(out.ndim if r > 0 else 0):
        n = out.shape[axis]
        widths = [(0, 0)] * out.ndim
        sl = [slice(None)] * out.ndim
        if r <= 4:
            widths[axis] = (r, r)
            padded = xp.pad(out, widths)
            sl[axis] = slice(0, n)
            acc = padded[tuple(sl)].copy()
            for k in range(1, 2 * r + 1):
                sl[axis] = slice(k, k + n)
                acc += padded[tuple(sl)]
            out = acc
        else:
            # Pad r zeros on both sides and one leading zero: each window sum is a difference of two slices.
            widths[axis] = (r + 1, r)
            c = xp.cumsum(xp.pad(out, widths), axis=axis)
            hi, lo = list(sl), list(sl)
            hi[axis] = slice(2 * r + 1, None)
            lo[axis] = slice(0, n)
            out = c[tuple(hi)] - c[tuple(lo)]
    return out.astype(np.float64, copy=False)
