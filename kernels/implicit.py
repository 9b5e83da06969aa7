"""Unsplit backward-Euler reaction-diffusion step: multigrid-preconditioned conjugate gradients.

One step of ``dc/dt = div(D grad c) - (lambda + K(x)) c + Q(x)`` is the linear system

    ``(I - dt div D grad + dt (lambda + K)) c^{n+1} = c^n + dt Q + (Dirichlet inflow)``,

solved without operator splitting. The discretisation is exactly that of the LOD scheme in
:mod:`kernels.diffusion`: cell-centred voxels, harmonic-mean face conductances ``2 D_i D_j / (D_i + D_j)``,
a Dirichlet face holding ``c_b`` half a voxel beyond the outermost voxel centre (conductance ``2 D`` of the
boundary voxel), no-flux faces, uniform decay ``lambda``, per-voxel sink ``K >= 0`` (1/min) and source ``Q``
(unit/min). The matrix is symmetric, strictly diagonally dominant (every row has the ``1`` of the identity)
and an M-matrix, so its exact solution is positive and obeys the maximum principle. Unlike LOD, the steady state
of the step map is the exact discrete steady state for any ``K dt``. LOD's splitting error at ``K dt = 60``
(tumour uptake at the 6-min agent step) is large: on ``benchmarks/oxygen.py``'s nodules its fixed point puts
75 % (2-D) and 66 % (3-D) of tumour voxels below 10 mmHg where the exact answer is 41 % and 2.2 %. With
``steady=True`` the identity is dropped and one solve gives the quasi-steady field directly.

**Method.** Conjugate gradients, warm-started from the current field (the previous step's solution),
preconditioned by one geometric multigrid V(1,1)-cycle built from array operations only (slices, reshapes,
elementwise operations and reductions), so that NumPy and CuPy run the same code:

- cell-centred coarsening by pairs along every axis (``ceil(n / 2)``: odd and non-power-of-two sizes are
  exact, the last coarse cell of an odd axis has one child), down to at most 4 cells per axis;
- restriction = sum over children, prolongation = piecewise-constant injection (its transpose), so the
  V-cycle is symmetric, as CG requires;
- coarse operators by *geometric* Galerkin-like coarsening: the mass and reaction terms (``1 + dt lambda``,
  ``dt K``) are summed over the children (exactly Galerkin), and the face conductance of a coarse face is half the
  sum of the fine conductances across it (the re-discretised conductance ``D A / h`` for uniform ``D``; plain
  Galerkin with piecewise-constant transfer would double it). Strong, sharply varying sinks are thus seen
  at every level with their true total strength, which is what keeps the V-cycle effective where ``K dt``
  dominates the coarse diagonal;
- damped Jacobi smoothing (one sweep before, one after), the coarsest grid (at most 64 cells) solved exactly
  by a dense inverse rebuilt per step.

Only the ``K``-dependent pieces (the diagonals of every level and the coarsest inverse) are rebuilt per step:
restricting ``dt K`` costs about two passes over the lattice.

**Stopping rule.** After each iteration ``z = M^-1 r`` (the V-cycle applied to the residual) is available for
free; since ``M^-1`` approximates ``A^-1``, ``z`` estimates the remaining error ``c* - c`` voxel by voxel, in
the field's unit. The solve stops as soon as

    ``max|z| <= tolerance * max|c| + absolute_tolerance``,

and reports ``iterations`` and ``residual = max|z| / max|c|`` (the relative preconditioned residual in the
max norm: an estimate of the relative max-norm error). With a V-cycle contraction ``rho`` the true error is at
most about ``max|z| / (1 - rho)``; the tests find it within 3x of the estimate. If ``c^n`` is already within
tolerance of the new solution (a converged steady state), the step costs one residual and one V-cycle (about
three operator applications) and returns 0 iterations; each iteration adds about three more.

**Recommended tolerance: 1e-3** (the default, ``DEFAULT_TOLERANCE``). For oxygen at 38 mmHg it stops at an
estimated error of ~0.04 mmHg; against an exact sparse solve of the tests' tumour/vessel problems (``K dt`` = 60
and 600) the max error is 0.01-0.04 mmHg, well inside the 0.5 mmHg requirement (1e-2 gives 0.17-0.25 mmHg,
1e-4 ~0.003). Each factor 3-10 tighter costs about one CG iteration. Dot products run in the field dtype (CG's
step lengths are insensitive to their round-off); the stopping test is a max-norm, exact in any dtype, and the
relative tolerance is floored at ``16 eps`` of the dtype (~2e-6 in float32).

**Warm starts and lag.** A step whose whole change is below the tolerance takes no iteration and leaves the
field as it is, so the field may lag the exact step map by up to the tolerance; errors left by successive steps
are damped by the step itself (by ``1 / (1 + lambda dt)`` or faster), so the lag stays of order
``tolerance * max|c| * (1 + lambda dt) / (lambda dt)`` at worst. Pass ``min_iterations=1`` for slowly evolving
fields where that matters.

**Measured alternatives** (docs/MODEL.md, section 3b; ``benchmarks/oxygen.py``). CG preconditioned by the
symmetrised LOD step: that step is exactly symmetric (the mean of the forward and reversed products of
symmetric axis solves) but not positive definite when ``K`` varies between voxels, and CG breaks down on it
(``r . z < 0`` at the third iteration); under GMRES it is a weak preconditioner at ``D dt / dx**2 = 1500``
(after 100 iterations, 13 mmHg (2-D) and 28 mmHg (3-D) of error are left). PyAMG's smoothed aggregation with
SciPy's CG converges in 3-5 iterations but its set-up per sink pattern (12 s at 128³) and solve (1.6 s) are
far dearer on the CPU than this solver's whole step (37-70 ms warm, 0.26 s cold).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from kernels._xp import array_namespace
from kernels.diffusion import checked_inputs

__all__ = [
    "DEFAULT_TOLERANCE",
    "ImplicitFactors",
    "ImplicitLevel",
    "SolveInfo",
    "implicit_diffuse",
    "implicit_factors",
    "implicit_matrix",
    "implicit_scratch_size",
]

DEFAULT_TOLERANCE = 1e-3
# Damped-Jacobi weight per lattice dimension. Measured on the oxygen problem (tumour ball/disc plus vessels,
# cold start to 1e-5): 2-D 100² took 14/11/9/10/42 CG iterations at 0.6/0.7/0.8/0.9/1.0, 3-D 128³ 19/16/13/11/36.
JACOBI_WEIGHT = {1: 2.0 / 3.0, 2: 0.8, 3: 0.9}
COARSEST_CELLS_PER_AXIS = 4


@dataclass(frozen=True)
class ImplicitLevel:
    """Static (``K``-independent) operator of one multigrid level.

    The operator of a level is ``(A x)_i = diag_i x_i - sum_faces T_f x_j``, in units of the finest voxel
    volume (a coarse cell's mass term is the sum of its children's).

    Attributes
    ----------
    shape : tuple of int
        Level shape.
    conductance : tuple
        Per axis, the face conductances ``T = dt D_face / dx**2`` (dimensionless, coarse levels scaled as
        described in the module docstring): a Python float where uniform (finest level, uniform ``D``), else an
        array of ``shape`` with ``n - 1`` entries along that axis, dtype of the field.
    static_diag : array, shape ``shape``
        Diagonal without the per-voxel sink: ``mass (1 + dt lambda) + sum of face and Dirichlet conductances``
        (``mass`` = number of fine voxels in the cell; the ``1`` is dropped for a steady solve).
    """

    shape: tuple
    conductance: tuple
    static_diag: object


@dataclass(frozen=True)
class ImplicitFactors:
    """Precomputed pieces of the implicit step (everything that does not depend on ``K`` or ``Q``).

    Attributes
    ----------
    shape : tuple of int
        Lattice shape.
    dtype : numpy.dtype
        Field dtype.
    dt_min : float
        Time step (min).
    decay_per_min : float
        Uniform decay ``lambda`` (1/min).
    steady : bool
        If true the identity term is dropped: the step solves the quasi-steady problem
        ``-div D grad c + (lambda + K) c = Q`` and ignores the field's values except as the initial guess.
    levels : tuple of ImplicitLevel
        Multigrid hierarchy, finest first.
    inflow : tuple of (int, int, object)
        Dirichlet inflow ``T_b c_b`` per Dirichlet face as ``(axis, side, value)``, side 0 (low) or -1 (high),
        value a float or an array of the face slab (field dtype); added to the right-hand side.
    coarsest_matrix : array
        Dense static operator of the coarsest level (``N x N``, ``N`` its cell count), field dtype.
    coarsest_inverse : array
        Its inverse (used when there is no per-voxel sink).
    """

    shape: tuple
    dtype: np.dtype
    dt_min: float
    decay_per_min: float
    steady: bool
    levels: tuple
    inflow: tuple
    coarsest_matrix: object
    coarsest_inverse: object


@dataclass(frozen=True)
class SolveInfo:
    """Outcome of one :func:`implicit_diffuse` solve.

    Attributes
    ----------
    iterations : int
        CG iterations taken (0: the warm start was already within tolerance).
    residual : float
        Final relative preconditioned residual ``max|M^-1 r| / max|c|`` (dimensionless): an estimate of the
        relative max-norm error of the returned field.
    converged : bool
        Whether the stopping rule was met within ``max_iterations``.
    """

    iterations: int
    residual: float
    converged: bool


# ---------------------------------------------------------------------------------------------------------------
# Grid transfers
# ---------------------------------------------------------------------------------------------------------------


def _at(ndim: int, axis: int, index) -> tuple:
    """Index tuple that applies ``index`` (a slice or an int) along ``axis`` and ``:`` elsewhere."""
    return (slice(None),) * axis + (index,)


def _coarse_shape(shape) -> tuple:
    return tuple((n + 1) // 2 for n in shape)


def _level_shapes(shape) -> list:
    """Shapes of the multigrid levels, finest first, down to at most ``COARSEST_CELLS_PER_AXIS`` cells per axis."""
    shapes = [tuple(int(n) for n in shape)]
    while max(shapes[-1]) > COARSEST_CELLS_PER_AXIS:
        shapes.append(_coarse_shape(shapes[-1]))
    return shapes


def _transit_shapes(fine, coarse) -> list:
    """Shapes after coarsening axes ``0..k-1`` (``k = 1..ndim-1``): the intermediates of the transfers."""
    return [tuple(coarse[:k]) + tuple(fine[k:]) for k in range(1, len(fine))]


def _pairs_sum(src, dst, axis: int, xp) -> None:
    """``dst = src`` summed over pairs of cells along ``axis`` (an odd last cell is copied)."""
    n = src.shape[axis]
    m = n // 2
    xp.add(src[_at(src.ndim, axis, slice(0, 2 * m, 2))], src[_at(src.ndim, axis, slice(1, 2 * m, 2))],
           out=dst[_at(src.ndim, axis, slice(0, m))])
    if n % 2:
        xp.copyto(dst[_at(src.ndim, axis, slice(m, m + 1))], src[_at(src.ndim, axis, slice(n - 1, n))])


def _pairs_spread(src, dst, axis: int, xp, add: bool) -> None:
    """Piecewise-constant prolongation along ``axis``: each cell of ``src`` to its one or two children in ``dst``."""
    n = dst.shape[axis]
    m = n // 2
    nd = dst.ndim
    parents = src[_at(nd, axis, slice(0, m))]
    for offset in (0, 1):
        child = dst[_at(nd, axis, slice(offset, 2 * m, 2))]
        if add:
            child += parents
        else:
            xp.copyto(child, parents)
    if n % 2:
        child, parent = dst[_at(nd, axis, slice(n - 1, n))], src[_at(nd, axis, slice(m, m + 1))]
        if add:
            child += parent
        else:
            xp.copyto(child, parent)


def _restrict(fine, coarse, transit, xp) -> None:
    """``coarse`` = sum of ``fine`` over each coarse cell's children, one axis at a time (axis 0 first)."""
    src = fine
    for axis in range(fine.ndim):
        dst = coarse if axis == fine.ndim - 1 else transit[axis]
        _pairs_sum(src, dst, axis, xp)
        src = dst


def _prolong_add(coarse, fine, transit, xp) -> None:
    """``fine += P coarse`` with the piecewise-constant prolongation ``P`` (the transpose of :func:`_restrict`)."""
    src = coarse
    for axis in range(fine.ndim - 1, -1, -1):
        if axis == 0:
            _pairs_spread(src, fine, 0, xp, add=True)
        else:
            dst = transit[axis - 1]
            _pairs_spread(src, dst, axis, xp, add=False)
            src = dst


def _restrict_new(fine, xp):
    """Allocating :func:`_restrict` for set-up work (any shape, including face arrays)."""
    coarse = xp.empty(_coarse_shape(fine.shape), dtype=fine.dtype)
    transit = [xp.empty(s, dtype=fine.dtype) for s in _transit_shapes(fine.shape, coarse.shape)]
    _restrict(fine, coarse, transit, xp)
    return coarse


# ---------------------------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------------------------


def _harmonic_faces(diffusivity, axis: int, xp):
    """Harmonic mean of ``D`` on the interior faces along ``axis`` (``n - 1`` entries there), as in LOD."""
    n = diffusivity.shape[axis]
    lo = diffusivity[_at(diffusivity.ndim, axis, slice(0, n - 1))]
    hi = diffusivity[_at(diffusivity.ndim, axis, slice(1, n))]
    total = lo + hi
    return xp.where(total > 0, 2 * lo * hi / xp.where(total > 0, total, 1), 0)


def _coarsen_faces(faces, axis: int, xp):
    """Coarse face conductances along ``axis``: half the sum of the fine faces on each coarse interface."""
    n = faces.shape[axis] + 1
    interface = faces[_at(faces.ndim, axis, slice(1, n - 1, 2))]  # fine face 2I+1 joins coarse cells I and I+1
    summed = interface
    for other in range(faces.ndim):
        if other != axis:
            coarse = list(summed.shape)
            coarse[other] = (coarse[other] + 1) // 2
            out = xp.empty(tuple(coarse), dtype=summed.dtype)
            _pairs_sum(summed, out, other, xp)
            summed = out
    return 0.5 * summed


def _coarsen_slab(slab, axis: int, length: int, xp):
    """Coarse Dirichlet conductances of one lattice face.

    ``slab`` holds the conductances of the face normal to ``axis`` (``length`` cells along that axis); they are
    summed over each coarse face and halved when ``axis`` itself is coarsened (the coarse centre is twice as far
    from the face).
    """
    for other in range(slab.ndim + 1):
        if other == axis:
            continue
        k = other if other < axis else other - 1
        coarse = list(slab.shape)
        coarse[k] = (coarse[k] + 1) // 2
        out = xp.empty(tuple(coarse), dtype=slab.dtype)
        _pairs_sum(slab, out, k, xp)
        slab = out
    return 0.5 * slab if length > 1 else slab


def _dense_operator(level: ImplicitLevel, xp):
    """Dense matrix of a (small) level's static operator, built on the host in float64."""
    shape = level.shape
    size = int(np.prod(shape))
    index = np.arange(size).reshape(shape)
    matrix = np.diag(_host(level.static_diag).astype(np.float64).ravel())
    for axis, t in enumerate(level.conductance):
        n = shape[axis]
        if n < 2:
            continue
        lo = index[_at(len(shape), axis, slice(0, n - 1))].ravel()
        hi = index[_at(len(shape), axis, slice(1, n))].ravel()
        tv = np.broadcast_to(_host(t).astype(np.float64), index[_at(len(shape), axis, slice(0, n - 1))].shape).ravel()
        matrix[lo, hi] -= tv
        matrix[hi, lo] -= tv
    return matrix


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def implicit_factors(
    shape,
    spacing_um: float,
    dt_min: float,
    diffusivity,
    boundaries,
    dtype=np.float32,
    xp=np,
    decay_per_min: float = 0.0,
    steady: bool = False,
) -> ImplicitFactors:
    """Precompute the operator and the multigrid hierarchy of the implicit step.

    Parameters
    ----------
    shape : tuple of int
        Lattice shape, 2-D ``(nx, ny)`` or 3-D ``(nx, ny, nz)`` (any sizes, odd included).
    spacing_um : float
        Voxel edge ``dx`` (µm).
    dt_min : float
        Time step (min).
    diffusivity : float or array
        Diffusion coefficient (µm²/min): a scalar, or an array of ``shape`` for a spatially varying ``D``
        (non-negative).
    boundaries : sequence of (low, high) pairs
        One pair per axis; each entry ``None`` (no-flux face) or a float (Dirichlet face held at it).
    dtype : numpy dtype
        ``float32`` or ``float64``, the field dtype.
    xp : module
        Array namespace for a scalar ``D`` (an array ``D`` brings its own).
    decay_per_min : float
        Uniform first-order decay ``lambda`` (1/min).
    steady : bool
        Drop the identity term and solve the quasi-steady problem (needs ``lambda > 0``, a sink or a Dirichlet
        face for a unique solution).

    Returns
    -------
    ImplicitFactors
        For :func:`implicit_diffuse`.
    """
    shape, dtype, diffusivity, xp = checked_inputs(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp,
                                                   decay_per_min)
    ndim = len(shape)
    scale = dt_min / spacing_um**2
    uniform = np.ndim(diffusivity) == 0
    d_cells = xp.full(shape, float(diffusivity), dtype=np.float64) if uniform else diffusivity

    mass = (0.0 if steady else 1.0) + dt_min * decay_per_min
    # Finest level, in float64 for the set-up: face conductances, Dirichlet slabs (axis, side, conductance).
    faces = [scale * _harmonic_faces(d_cells, axis, xp) for axis in range(ndim)]
    slabs, inflow = [], []
    for axis, pair in enumerate(boundaries):
        for side, value in zip((0, -1), pair):
            if value is None:
                continue
            g = 2.0 * scale * d_cells[_at(ndim, axis, side)]
            slabs.append((axis, side, g))
            flow = float(g.ravel()[0]) * float(value) if uniform else (g * float(value)).astype(dtype)
            inflow.append((axis, side, flow))
    counts = xp.ones(shape, dtype=np.float64)

    levels = []
    shapes = _level_shapes(shape)
    for depth, level_shape in enumerate(shapes):
        if depth > 0:
            faces = [_coarsen_faces(f, axis, xp) for axis, f in enumerate(faces)]
            finer = shapes[depth - 1]
            slabs = [(axis, side, _coarsen_slab(g, axis, finer[axis], xp)) for axis, side, g in slabs]
            counts = _restrict_new(counts, xp)
        diag = mass * counts
        for axis, f in enumerate(faces):
            n = level_shape[axis]
            diag[_at(ndim, axis, slice(0, n - 1))] += f
            diag[_at(ndim, axis, slice(1, n))] += f
        for axis, side, g in slabs:
            diag[_at(ndim, axis, side)] += g
        if depth == 0 and uniform:
            conductance = tuple(scale * float(diffusivity) for _ in range(ndim))
        else:
            conductance = tuple(xp.ascontiguousarray(f.astype(dtype)) for f in faces)
        levels.append(ImplicitLevel(level_shape, conductance, xp.ascontiguousarray(diag.astype(dtype))))

    dense = _dense_operator(levels[-1], xp)
    return ImplicitFactors(
        shape=shape,
        dtype=dtype,
        dt_min=float(dt_min),
        decay_per_min=float(decay_per_min),
        steady=bool(steady),
        levels=tuple(levels),
        inflow=tuple(inflow),
        coarsest_matrix=xp.asarray(dense.astype(dtype)),
        coarsest_inverse=xp.asarray(np.linalg.inv(dense).astype(dtype)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Scratch layout
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _layout(shape) -> tuple:
    """Named buffers carved from the flat scratch: ``(level or None, name, shape, size)`` in order (cached)."""
    shapes = _level_shapes(shape)
    layout = [(None, name, shapes[0]) for name in ("rhs", "residual", "precond", "direction", "product")]
    for depth, level_shape in enumerate(shapes):
        names = ["diag", "inv_diag"]
        if depth > 0:
            names += ["rhs", "solution", "sink"]
        if depth < len(shapes) - 1:
            names += ["work", "face"]
        layout += [(depth, name, level_shape) for name in names]
        if depth < len(shapes) - 1:
            layout += [(depth, f"transit{k}", s) for k, s in enumerate(_transit_shapes(level_shape, shapes[depth + 1]))]
    return tuple((depth, name, s, int(np.prod(s))) for depth, name, s in layout)


def implicit_scratch_size(shape) -> int:
    """Number of elements of the flat scratch buffer :func:`implicit_diffuse` needs for a lattice of ``shape``.

    About ``10.5 x`` the lattice size in 3-D (``12 x`` in 2-D): five CG vectors, the finest level's diagonal,
    smoother weights and work arrays, and the coarser levels.
    """
    return sum(size for _, _, _, size in _layout(tuple(int(n) for n in shape)))


def _carve(scratch, shape) -> dict:
    views, start = {}, 0
    for depth, name, s, size in _layout(tuple(int(n) for n in shape)):
        views[(depth, name)] = scratch[start : start + size].reshape(s)
        start += size
    return views


# ---------------------------------------------------------------------------------------------------------------
# Operator, smoother, V-cycle
# ---------------------------------------------------------------------------------------------------------------


def _apply(level: ImplicitLevel, diag, x, out, face, xp) -> None:
    """``out = A x`` on one level; ``face`` is a work array of the level's shape."""
    nd = x.ndim
    xp.multiply(diag, x, out=out)
    if isinstance(level.conductance[0], float):
        # Uniform conductance: sum the neighbours once, then one multiply-subtract.
        nb = face
        for axis in range(nd):
            n = x.shape[axis]
            lo, hi = _at(nd, axis, slice(0, n - 1)), _at(nd, axis, slice(1, n))
            if axis == 0:
                xp.copyto(nb[hi], x[lo])
                nb[_at(nd, 0, 0)] = 0
            else:
                nb[hi] += x[lo]
            nb[lo] += x[hi]
        nb *= level.conductance[0]
        out -= nb
        return
    for axis, t in enumerate(level.conductance):
        n = x.shape[axis]
        if n < 2:
            continue
        lo, hi = _at(nd, axis, slice(0, n - 1)), _at(nd, axis, slice(1, n))
        tmp = face[lo]
        xp.multiply(t, x[hi], out=tmp)
        out[lo] -= tmp
        xp.multiply(t, x[lo], out=tmp)
        out[hi] -= tmp


def _vcycle(factors: ImplicitFactors, views, depth: int, rhs, solution, coarsest_inverse, xp) -> None:
    """``solution = M^-1 rhs`` by one V(1,1)-cycle from a zero initial guess (symmetric in ``rhs``)."""
    levels = factors.levels
    if depth == len(levels) - 1:
        flat = coarsest_inverse @ rhs.reshape(-1)
        xp.copyto(solution, flat.reshape(rhs.shape))
        return
    level = levels[depth]
    diag, inv_diag = views[(depth, "diag")], views[(depth, "inv_diag")]
    work, face = views[(depth, "work")], views[(depth, "face")]
    transit = [views[(depth, f"transit{k}")] for k in range(rhs.ndim - 1)]
    coarse_rhs, coarse_solution = views[(depth + 1, "rhs")], views[(depth + 1, "solution")]
    xp.multiply(inv_diag, rhs, out=solution)  # pre-smoothing: one Jacobi sweep from zero
    _apply(level, diag, solution, work, face, xp)
    xp.subtract(rhs, work, out=work)
    _restrict(work, coarse_rhs, transit, xp)
    _vcycle(factors, views, depth + 1, coarse_rhs, coarse_solution, coarsest_inverse, xp)
    _prolong_add(coarse_solution, solution, transit, xp)
    _apply(level, diag, solution, work, face, xp)  # post-smoothing: one Jacobi sweep
    xp.subtract(rhs, work, out=work)
    work *= inv_diag
    solution += work


def _prepare_levels(factors: ImplicitFactors, views, sink_dt, xp):
    """Per-step diagonals ``static + dt K`` and Jacobi weights of every level; the coarsest inverse."""
    levels = factors.levels
    for depth, level in enumerate(levels):
        diag = views[(depth, "diag")]
        if sink_dt is None:
            xp.copyto(diag, level.static_diag)
        elif depth == 0:
            xp.add(level.static_diag, sink_dt, out=diag)
        else:
            finer = sink_dt if depth == 1 else views[(depth - 1, "sink")]
            target = views[(depth, "sink")]
            transit = [views[(depth - 1, f"transit{k}")] for k in range(diag.ndim - 1)]
            _restrict(finer, target, transit, xp)
            xp.add(level.static_diag, target, out=diag)
        if depth < len(levels) - 1:
            inv = views[(depth, "inv_diag")]
            xp.divide(JACOBI_WEIGHT.get(diag.ndim, 0.9), diag, out=inv)
    if sink_dt is None:
        return factors.coarsest_inverse
    coarse_sink = views[(len(levels) - 1, "sink")].reshape(-1)
    matrix = factors.coarsest_matrix + xp.diag(coarse_sink)
    return xp.linalg.inv(matrix)


def _read_state(z, field, residual, curvature, xp) -> tuple[float, float, float, float]:
    """``(max|z|, max|field|, residual . z, curvature)`` on the host, from one device-to-host copy.

    The CG loop's only host synchronisation per iteration: every value it branches on comes across at once. The
    values keep the field's dtype, so the host arithmetic on them is the same as on separate ``float()`` reads.
    """
    values = xp.stack([z.max(), -z.min(), field.max(), -field.min(), xp.vdot(residual, z),
                       xp.ones((), dtype=field.dtype) if curvature is None else curvature]).astype(field.dtype)
    z_high, z_low, f_high, f_low, rz, curv = _host(values).tolist()
    return max(z_high, z_low), max(f_high, f_low), rz, curv


def implicit_diffuse(
    field,
    factors: ImplicitFactors,
    scratch=None,
    sink_per_min=None,
    source=None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = 100,
    absolute_tolerance: float = 0.0,
    min_iterations: int = 0,
    preconditioner=None,
) -> SolveInfo:
    """Advance ``field`` by one unsplit backward-Euler reaction-diffusion step, in place.

    Parameters
    ----------
    field : array, shape ``factors.shape``, dtype ``factors.dtype``
        ``c^n`` on entry (also the initial guess), ``c^{n+1}`` on exit (any unit).
    factors : ImplicitFactors
        From :func:`implicit_factors`, built for this shape, dtype and time step.
    scratch : array, optional
        Flat buffer of at least :func:`implicit_scratch_size` elements of the field dtype, reused across calls.
    sink_per_min : array, optional
        Per-voxel first-order sink ``K >= 0`` (1/min), shape ``factors.shape``.
    source : array, optional
        Per-voxel zero-order source ``Q`` (field unit per min), shape ``factors.shape``.
    tolerance : float
        Relative stopping tolerance on the max-norm error estimate (see the module docstring).
    max_iterations : int
        Cap on CG iterations; if reached, the field holds the last iterate and ``converged`` is false.
    absolute_tolerance : float
        Absolute floor of the stopping rule (field unit), for fields whose values are all near zero.
    min_iterations : int
        Iterations taken even if the warm start already meets the tolerance. With the default 0 a step whose
        whole change is below the tolerance leaves the field as it is: the field then lags the exact step map
        by up to the tolerance (see the module docstring); 1 makes that lag a fraction of the step's change.
    preconditioner : callable, optional
        ``preconditioner(residual, out)`` writing an approximation of ``A^-1 residual`` into ``out``; must be
        symmetric positive definite. Default: the multigrid V-cycle. (For experiments and benchmarks.)

    Returns
    -------
    SolveInfo
        Iterations, final relative residual and convergence flag.
    """
    xp = array_namespace(field)
    if tuple(field.shape) != factors.shape or field.dtype != factors.dtype:
        raise ValueError(
            f"field is {tuple(field.shape)} {field.dtype}, factors were built for {factors.shape} {factors.dtype}"
        )
    need = implicit_scratch_size(field.shape)
    if scratch is None or scratch.size < need or scratch.dtype != field.dtype:
        scratch = xp.empty(need, dtype=field.dtype)
    views = _carve(scratch, field.shape)
    dt, nd = factors.dt_min, field.ndim
    rhs, residual, z = views[(None, "rhs")], views[(None, "residual")], views[(None, "precond")]
    direction, product = views[(None, "direction")], views[(None, "product")]
    finest = factors.levels[0]
    diag, face = views[(0, "diag")], views[(0, "face")]

    sink_dt = None
    if sink_per_min is not None:
        sink_dt = direction  # free until the CG loop starts
        xp.multiply(sink_per_min, dt, out=sink_dt)
    coarsest_inverse = _prepare_levels(factors, views, sink_dt, xp)

    # Right-hand side: c^n (not for a steady solve) + dt Q + Dirichlet inflow.
    if factors.steady:
        rhs[...] = 0
    else:
        xp.copyto(rhs, field)
    if source is not None:
        xp.multiply(source, dt, out=product)
        rhs += product
    for axis, side, value in factors.inflow:
        rhs[_at(nd, axis, side)] += value

    def precondition(r, out):
        if preconditioner is None:
            _vcycle(factors, views, 0, r, out, coarsest_inverse, xp)
        else:
            preconditioner(r, out)

    _apply(finest, diag, field, product, face, xp)
    xp.subtract(rhs, product, out=residual)
    precondition(residual, z)
    iterations, rz_old = 0, 1.0
    error, size, rz, _ = _read_state(z, field, residual, None, xp)
    floor = max(tolerance, 16.0 * float(np.finfo(field.dtype).eps))
    while (error > floor * size + absolute_tolerance or iterations < min_iterations) and iterations < max_iterations:
        if not rz > 0:  # zero residual, or round-off has exhausted the search directions
            break
        if iterations == 0:
            xp.copyto(direction, z)
        else:
            direction *= rz / rz_old
            direction += z
        _apply(finest, diag, direction, product, face, xp)
        # The step length stays on the device: rz / curvature rounded once to the field dtype, as the host quotient
        # was when it scaled the arrays. A curvature that is not positive gives 0 (the field is left as it is)
        # and ends the loop once it is read with the next state.
        curvature = xp.vdot(direction, product)
        positive = curvature > 0
        alpha = xp.where(positive, rz / xp.where(positive, curvature, 1), 0).astype(field.dtype)
        xp.multiply(direction, alpha, out=z)  # z is free until the next V-cycle: the axpy temporary
        field += z
        xp.multiply(product, alpha, out=z)
        residual -= z
        precondition(residual, z)
        next_error, next_size, next_rz, curvature = _read_state(z, field, residual, curvature, xp)
        if not curvature > 0:
            break
        rz_old, rz = rz, next_rz
        iterations += 1
        error, size = next_error, next_size
    relative = error / size if size > 0 else error
    return SolveInfo(iterations, relative, bool(error <= floor * size + absolute_tolerance))


def implicit_matrix(field, factors: ImplicitFactors, sink_per_min=None, source=None):
    """The step's linear system as a SciPy sparse matrix, for reference solves and comparisons (host only).

    Parameters
    ----------
    field : array, shape ``factors.shape``
        ``c^n`` (any unit).
    factors : ImplicitFactors
        The step's factors.
    sink_per_min, source : array, optional
        As in :func:`implicit_diffuse`.

    Returns
    -------
    matrix : scipy.sparse.csr_matrix, shape ``(N, N)``, float64
        ``I + dt (lambda + K) - dt div D grad`` (without the ``I`` for a steady solve), in C order.
    rhs : numpy.ndarray, shape ``(N,)``, float64
        ``c^n + dt Q + Dirichlet inflow``.
    """
    import scipy.sparse as sparse

    level = factors.levels[0]
    shape, nd = factors.shape, len(factors.shape)
    size = int(np.prod(shape))
    diag = _host(level.static_diag).astype(np.float64)
    if sink_per_min is not None:
        diag = diag + factors.dt_min * _host(sink_per_min).astype(np.float64)
    index = np.arange(size).reshape(shape)
    rows, cols, vals = [np.arange(size)], [np.arange(size)], [diag.ravel()]
    for axis, t in enumerate(level.conductance):
        n = shape[axis]
        lo, hi = index[_at(nd, axis, slice(0, n - 1))], index[_at(nd, axis, slice(1, n))]
        tv = np.broadcast_to(_host(t).astype(np.float64), lo.shape).ravel()
        rows += [lo.ravel(), hi.ravel()]
        cols += [hi.ravel(), lo.ravel()]
        vals += [-tv, -tv]
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size))
    rhs = np.zeros(shape) if factors.steady else _host(field).astype(np.float64).copy()
    if source is not None:
        rhs += factors.dt_min * _host(source).astype(np.float64)
    for axis, side, value in factors.inflow:
        rhs[_at(nd, axis, side)] += _host(value).astype(np.float64) if not isinstance(value, float) else value
    return matrix, rhs.ravel()
