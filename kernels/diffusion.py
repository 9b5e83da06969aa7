"""Implicit locally-one-dimensional (LOD) reaction-diffusion on a cell-centred lattice.

One step of ``dc/dt = div(D grad c) - (lambda + K(x)) c + Q(x)`` is taken as a sequence of backward-Euler
solves, one per axis (the LOD splitting BioFVM uses):

``(I - dt A_k + dt (lambda + K) / d) c_k = c_{k-1} + dt Q / d``,  with ``c_0 = c^n``  and ``c^{n+1} = c_d``,

where ``A_k`` is the 1-D diffusion operator along axis ``k`` and ``d`` the number of axes. Each solve is the
Thomas algorithm vectorised over all lines of the lattice at once. The per-voxel sink ``K`` (uptake by cells,
relaxation of vessel voxels toward blood) sits inside the implicit operator rather than in a separate
pointwise step: at the agent time step ``K dt`` is of order 10-100, where a split pointwise step would distort
the quasi-steady profiles badly. Each sub-step is an M-matrix solve, so the scheme is unconditionally stable
and positivity-preserving for any ``D dt / dx**2``. It is first order in time and second order in space.

Spatially varying ``D`` enters through face conductances (harmonic mean of the two voxels a face joins), so
mass is conserved exactly under no-flux boundaries without decay. A Dirichlet face holds the value ``c_b`` on
the lattice boundary, half a voxel outside the outermost voxel centre.

Everything that does not change between steps (the tridiagonal coefficients and, when there is no per-voxel
sink, the whole Thomas factorisation) is precomputed once by :func:`lod_factors`. The sweeps run in place and
use a caller-provided scratch buffer, so a step allocates nothing of lattice size.

Two implementations of the same sweeps, chosen by the array namespace:

- NumPy: the Thomas algorithm vectorised over all lines of the lattice, a loop over the lattice planes along the
  swept axis (a few whole-plane array operations per plane), factors held as :class:`AxisFactors`;
- CuPy: one launch of the compiled kernel of ``kernels/cuda/lod_lines.cu`` per axis solve, one GPU thread per
  lattice line (see :mod:`kernels.lod_lines`), factors held as :class:`AxisLines`. A plane loop would cost a
  kernel launch per array operation, thousands per step, and the GPU would wait on the launches. For a
  spatially varying ``D`` the kernel reads the face conductances and forms the Thomas pivots itself, so a field
  keeps one lattice-sized coefficient array per axis instead of five.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels import lod_lines
from kernels._xp import array_namespace

__all__ = [
    "AxisFactors",
    "AxisLines",
    "LODFactors",
    "checked_inputs",
    "implicit_reactions",
    "lod_diffuse",
    "lod_factors",
    "lod_scratch_size",
    "reaction_share",
]


@dataclass(frozen=True)
class AxisFactors:
    """Coefficients of the backward-Euler solve along one axis.

    With the axis moved to the front, index ``i`` runs along the axis. Each coefficient is a Python float
    (uniform ``D``: the same for every line) or an array of the slab shape (spatially varying ``D``).

    Attributes
    ----------
    axis : int
        Lattice axis swept.
    lower, diag, upper : list
        Tridiagonal coefficients ``a_i``, ``b_i`` (diffusion only, without any reaction share) and ``c_i``.
    forward : list
        Precomputed ``m_i = a_i / p_{i-1}`` for the sweep without per-voxel sink (entry 0 unused); these
        include the uniform decay share.
    inv_pivot : list
        Precomputed reciprocal Thomas pivots ``1 / p_i`` for the sweep without per-voxel sink.
    rhs_low, rhs_high : float, array or None
        Dirichlet contribution added to the first and last slab of the right-hand side, or ``None``
        for a no-flux face.
    later_sweeps : int
        Number of axis solves after this one in a step (used to compensate the Dirichlet inflow, see
        :func:`reaction_share`).
    static_gain : float
        ``(1 + s_lambda) ** later_sweeps``, the compensation of the Dirichlet inflow for uniform decay alone.
    """

    axis: int
    lower: list
    diag: list
    upper: list
    forward: list
    inv_pivot: list
    rhs_low: object
    rhs_high: object
    later_sweeps: int = 0
    static_gain: float = 1.0


@dataclass(frozen=True)
class AxisLines:
    """Coefficients of the one-thread-per-line solve along one axis (the CuPy path, ``kernels/cuda/lod_lines.cuh``).

    Coefficients are in the field dtype and scaled by ``dt / dx**2`` (dimensionless). Exactly one of ``table``
    and ``faces`` is set.

    Attributes
    ----------
    axis : int
        Lattice axis swept; ``n`` below is its length.
    table : array or None
        Uniform ``D``: shape ``(5, n)``, the rows ``a_i``, ``b_i`` (diffusion only), ``c_i`` and the factorisation
        with the uniform decay share folded in, ``m_i`` and ``1 / p_i`` (as in :class:`AxisFactors`).
    faces : array or None
        Spatially varying ``D``: the face conductances ``D_face dt / dx**2`` of every line, an array of the lattice
        shape with ``n + 1`` entries along ``axis`` (entry ``k`` is the face below voxel ``k``; entries ``0`` and
        ``n`` are the lattice faces, ``2 D dt / dx**2`` for a Dirichlet face and 0 for a no-flux one).
    boundary_low, boundary_high : float
        Dirichlet value held at each lattice face (field unit); 0.0 for a no-flux face, whose conductance is 0.
    later_sweeps : int
        As in :class:`AxisFactors`.
    static_gain : float
        As in :class:`AxisFactors`.
    """

    axis: int
    table: object
    faces: object
    boundary_low: float
    boundary_high: float
    later_sweeps: int = 0
    static_gain: float = 1.0


@dataclass(frozen=True)
class LODFactors:
    """Precomputed coefficients of one LOD step, one :class:`AxisFactors` per axis.

    Attributes
    ----------
    shape : tuple of int
        Lattice shape.
    dtype : numpy.dtype
        Field dtype.
    dt_min : float
        Time step (min) the factors were built for.
    axes : tuple of AxisFactors or of AxisLines
        Factors in sweep order.
    decay_per_min : float
        Uniform decay folded into the static factors; added to any per-voxel sink.
    launch : callable or None
        For :class:`AxisLines`: ``launch(name, lines, args)`` runs the line-solve entry point ``name`` of
        ``kernels/cuda/lod_lines.cu`` over ``lines`` lines (on CuPy :func:`kernels.lod_lines.cuda_launch`).
        ``None`` for :class:`AxisFactors`, which are swept plane by plane.
    """

    shape: tuple
    dtype: np.dtype
    dt_min: float
    axes: tuple
    decay_per_min: float = 0.0
    launch: Callable | None = None


def reaction_share(kappa, ndim: int, xp=np):
    """Share ``s`` of a linear reaction ``kappa = K dt`` given to each of the ``ndim`` axis solves.

    The naive share ``kappa / ndim`` makes the LOD steady state wrong at large ``kappa``: a profile that varies
    along one axis is attenuated again by every other axis solve, so the effective decay rate and the inflow
    through Dirichlet faces come out far too small (at ``kappa = 6`` in 3-D, a decay profile near a face is
    about 10 % of the true one). Choosing ``s`` with

        ``1 + s - (1 + s) ** -(ndim - 1) = kappa``

    and multiplying the Dirichlet inflow of axis ``k`` by ``(1 + s) ** (number of later solves)`` makes the
    steady state exact for profiles that vary along any one axis, for any ``kappa``, and reduces to
    ``s = kappa / ndim`` (the textbook split) as ``kappa -> 0``. The source that accompanies the sink is shared
    as ``Q dt s / kappa`` so that a voxel with no diffusion reaches ``Q / K`` exactly.

    Parameters
    ----------
    kappa : float or array
        ``K dt`` (dimensionless), non-negative.
    ndim : int
        Number of axis solves per step.
    xp : module
        Array namespace of ``kappa`` when it is an array.

    Returns
    -------
    float or array
        The share ``s`` (dimensionless), same shape as ``kappa``.
    """
    if ndim == 1:
        return kappa
    if ndim == 2:
        return 0.5 * (kappa + xp.sqrt(kappa * kappa + 4.0)) - 1.0
    # Newton on f(u) = u - u**(1 - ndim) - kappa, u = 1 + s: f is concave and increasing, so iterates started
    # where f <= 0 (u = 1 + kappa / ndim) rise monotonically to the root.
    u = 1.0 + kappa / ndim
    for _ in range(5):
        inv = u ** (1 - ndim)
        u = u - (u - inv - kappa) / (1.0 + (ndim - 1) * inv / u)
    return u - 1.0


def _face_conductance(diffusivity, axis: int, xp):
    """Harmonic-mean diffusivity on the interior faces along ``axis`` (µm²/min); ``n - 1`` entries there."""
    n = diffusivity.shape[axis]
    lo = xp.take(diffusivity, xp.arange(n - 1), axis=axis)
    hi = xp.take(diffusivity, xp.arange(1, n), axis=axis)
    total = lo + hi
    return xp.where(total > 0, 2 * lo * hi / xp.where(total > 0, total, 1), 0)


def _tridiagonal(g_left, g_right, scale):
    """Rows ``a_i``, ``b_i``, ``c_i`` (diffusion only) from the conductances of each voxel's two faces."""
    lower = [-scale * g for g in g_left]
    upper = [-scale * g for g in g_right]
    diag = [1.0 + scale * (gl + gr) for gl, gr in zip(g_left, g_right)]
    return lower, diag, upper


def _thomas_factors(lower, diag, upper, cast):
    """Forward multipliers and reciprocal pivots of a tridiagonal matrix (lists of floats or arrays)."""
    n = len(diag)
    inv, fwd = [None] * n, [0.0] * n
    inv[0] = 1.0 / diag[0]
    cprime = upper[0] * inv[0]
    for i in range(1, n):
        inv[i] = 1.0 / (diag[i] - lower[i] * cprime)
        cprime = upper[i] * inv[i]
        fwd[i] = cast(lower[i] * inv[i - 1])
    return fwd, [cast(v) for v in inv]


def lod_factors(
    shape,
    spacing_um: float,
    dt_min: float,
    diffusivity,
    boundaries,
    dtype=np.float32,
    xp=np,
    decay_per_min: float = 0.0,
) -> LODFactors:
    """Precompute the coefficients of one LOD step.

    Parameters
    ----------
    shape : tuple of int
        Lattice shape, 2-D ``(nx, ny)`` or 3-D ``(nx, ny, nz)``.
    spacing_um : float
        Voxel edge ``dx`` (µm).
    dt_min : float
        Time step (min).
    diffusivity : float or array
        Diffusion coefficient (µm²/min): a scalar, or an array of ``shape`` for a spatially varying ``D``.
        Must be non-negative.
    boundaries : sequence of (low, high) pairs
        One pair per axis; each entry is ``None`` (no-flux face) or a float (Dirichlet face held at it).
    dtype : numpy dtype
        ``float32`` or ``float64``, the dtype of the field the factors are applied to.
    xp : module
        Array namespace for a scalar ``D`` (an array ``D`` brings its own).
    decay_per_min : float
        Uniform first-order decay ``lambda`` (1/min), folded into the precomputed diagonal.

    Returns
    -------
    LODFactors
        Coefficients for :func:`lod_diffuse`: plane-sweep :class:`AxisFactors` on NumPy, line-solve
        :class:`AxisLines` with the compiled kernel on CuPy.
    """
    if (xp if np.ndim(diffusivity) == 0 else array_namespace(diffusivity)).__name__ == "cupy":  # checks its inputs
        return _line_factors(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp, decay_per_min,
                             lod_lines.cuda_launch)
    shape, dtype, diffusivity, xp = checked_inputs(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp,
                                                    decay_per_min)
    scale = dt_min / spacing_um**2
    ndim = len(shape)
    decay_share = float(reaction_share(dt_min * decay_per_min, ndim, np))
    uniform = np.ndim(diffusivity) == 0

    def cast(v):
        return float(v) if uniform else xp.ascontiguousarray(xp.asarray(v, dtype=dtype))

    axes = []
    for axis, (low, high) in enumerate(boundaries):
        n = shape[axis]
        if uniform:
            d = float(diffusivity)
            faces = [d] * (n - 1)
            g_low = 2.0 * d if low is not None else 0.0
            g_high = 2.0 * d if high is not None else 0.0
        else:
            dv = xp.moveaxis(diffusivity, axis, 0)
            gf = xp.moveaxis(_face_conductance(diffusivity, axis, xp), axis, 0)
            faces = [gf[i] for i in range(n - 1)]
            g_low = 2.0 * dv[0] if low is not None else 0.0 * dv[0]
            g_high = 2.0 * dv[-1] if high is not None else 0.0 * dv[-1]
        lower, diag, upper = _tridiagonal([g_low, *faces], [*faces, g_high], scale)
        fwd, inv = _thomas_factors(lower, [b + decay_share for b in diag], upper, cast)
        rhs_low = cast(scale * g_low * float(low)) if low is not None else None
        rhs_high = cast(scale * g_high * float(high)) if high is not None else None
        axes.append(
            AxisFactors(
                axis,
                lower=[cast(v) for v in lower],
                diag=[cast(v) for v in diag],
                upper=[cast(v) for v in upper],
                forward=fwd,
                inv_pivot=inv,
                rhs_low=rhs_low,
                rhs_high=rhs_high,
                later_sweeps=ndim - 1 - axis,
                static_gain=(1.0 + decay_share) ** (ndim - 1 - axis),
            )
        )
    return LODFactors(shape=shape, dtype=dtype, dt_min=float(dt_min), axes=tuple(axes),
                      decay_per_min=float(decay_per_min))


def checked_inputs(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp, decay_per_min):
    """Validate the inputs of :func:`lod_factors` (and of ``kernels.implicit.implicit_factors``).

    Returns the shape tuple, the dtype, ``D`` (a scalar, or an array of the lattice shape in float64) and the array
    namespace (an array ``D`` brings its own).
    """
    shape = tuple(int(n) for n in shape)
    if len(boundaries) != len(shape):
        raise ValueError(f"boundaries has {len(boundaries)} axes, the lattice has {len(shape)}")
    if spacing_um <= 0 or dt_min <= 0:
        raise ValueError(f"spacing_um and dt_min must be positive, got {spacing_um} and {dt_min}")
    if decay_per_min < 0:
        raise ValueError(f"decay_per_min must be >= 0 1/min, got {decay_per_min}")
    dtype = np.dtype(dtype)
    if np.ndim(diffusivity) == 0:
        if float(diffusivity) < 0:
            raise ValueError(f"diffusivity must be >= 0 µm²/min, got {float(diffusivity)}")
    else:
        xp = array_namespace(diffusivity)
        if tuple(diffusivity.shape) != shape:
            raise ValueError(f"diffusivity has shape {tuple(diffusivity.shape)}, the lattice is {shape}")
        dmin = float(diffusivity.min())
        if dmin < 0:
            raise ValueError(f"diffusivity must be >= 0 µm²/min everywhere, got a minimum of {dmin}")
        diffusivity = xp.asarray(diffusivity, dtype=np.float64)  # factor in float64, store in dtype
    return shape, dtype, diffusivity, xp


def _line_factors(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp, decay_per_min, launch):
    """:class:`AxisLines` factors for the line-solve kernel, run by ``launch`` (inputs as :func:`lod_factors`)."""
    shape, dtype, diffusivity, xp = checked_inputs(shape, spacing_um, dt_min, diffusivity, boundaries, dtype, xp,
                                                    decay_per_min)
    lod_lines.kernel_name(dtype)  # rejects a dtype the kernel has no entry point for
    scale = dt_min / spacing_um**2
    ndim = len(shape)
    decay_share = float(reaction_share(dt_min * decay_per_min, ndim, np))
    axes = []
    for axis, (low, high) in enumerate(boundaries):
        table = faces = None
        if np.ndim(diffusivity) == 0:
            d, n = float(diffusivity), shape[axis]
            g_low = 2.0 * d if low is not None else 0.0
            g_high = 2.0 * d if high is not None else 0.0
            lower, diag, upper = _tridiagonal([g_low] + [d] * (n - 1), [d] * (n - 1) + [g_high], scale)
            fwd, inv = _thomas_factors(lower, [b + decay_share for b in diag], upper, float)
            table = xp.asarray(np.array([lower, diag, upper, fwd, inv], dtype=dtype))
        else:
            faces = _scaled_faces(diffusivity, axis, low is not None, high is not None, scale, dtype, xp)
        axes.append(AxisLines(axis, table=table, faces=faces,
                              boundary_low=0.0 if low is None else float(low),
                              boundary_high=0.0 if high is None else float(high),
                              later_sweeps=ndim - 1 - axis,
                              static_gain=(1.0 + decay_share) ** (ndim - 1 - axis)))
    return LODFactors(shape=shape, dtype=dtype, dt_min=float(dt_min), axes=tuple(axes),
                      decay_per_min=float(decay_per_min), launch=launch)


def _scaled_faces(diffusivity, axis: int, dirichlet_low: bool, dirichlet_high: bool, scale: float, dtype, xp):
    """All ``n + 1`` face conductances along ``axis`` times ``scale``, in ``dtype`` (see :class:`AxisLines`)."""
    n = diffusivity.shape[axis]
    low = xp.take(diffusivity, xp.arange(0, 1), axis=axis) * (2.0 if dirichlet_low else 0.0)
    high = xp.take(diffusivity, xp.arange(n - 1, n), axis=axis) * (2.0 if dirichlet_high else 0.0)
    faces = xp.concatenate([low, _face_conductance(diffusivity, axis, xp), high], axis=axis)
    return xp.ascontiguousarray((faces * scale).astype(dtype))


def _add_dirichlet(lines, f: AxisFactors, gain_low, gain_high) -> None:
    """Add the Dirichlet inflow, scaled by the compensation gains of :func:`reaction_share`."""
    if f.rhs_low is not None:
        lines[0] += f.rhs_low * gain_low
    if f.rhs_high is not None:
        lines[lines.shape[0] - 1] += f.rhs_high * gain_high


def _sweep_static(lines, f: AxisFactors, tmp, xp) -> None:
    """Thomas solve in place with the precomputed factorisation (no per-voxel sink)."""
    n = lines.shape[0]
    multiply, subtract = xp.multiply, xp.subtract
    fwd, inv, upper = f.forward, f.inv_pivot, f.upper
    # Forward elimination on e_i = d'_i p_i: e_i = d_i - m_i e_{i-1}.
    for i in range(1, n):
        multiply(lines[i - 1], fwd[i], out=tmp)
        subtract(lines[i], tmp, out=lines[i])
    # Back substitution: x_{n-1} = e_{n-1} / p_{n-1}; x_i = (e_i - c_i x_{i+1}) / p_i.
    multiply(lines[n - 1], inv[n - 1], out=lines[n - 1])
    for i in range(n - 2, -1, -1):
        multiply(lines[i + 1], upper[i], out=tmp)
        subtract(lines[i], tmp, out=lines[i])
        multiply(lines[i], inv[i], out=lines[i])


def _sweep_sink(lines, f: AxisFactors, sink, cprime, tmp, inv, xp) -> None:
    """Thomas solve in place with a per-voxel addition ``sink`` to the diagonal (pivots computed here)."""
    n = lines.shape[0]
    multiply, subtract, add = xp.multiply, xp.subtract, xp.add
    lower, diag, upper = f.lower, f.diag, f.upper
    add(sink[0], diag[0], out=inv)
    xp.reciprocal(inv, out=inv)
    multiply(inv, upper[0], out=cprime[0])
    multiply(lines[0], inv, out=lines[0])
    for i in range(1, n):
        multiply(cprime[i - 1], lower[i], out=inv)  # pivot p_i = b_i + s_i - a_i c'_{i-1}
        subtract(sink[i], inv, out=inv)
        add(inv, diag[i], out=inv)
        xp.reciprocal(inv, out=inv)
        multiply(inv, upper[i], out=cprime[i])
        multiply(lines[i - 1], lower[i], out=tmp)  # d'_i = (d_i - a_i d'_{i-1}) / p_i
        subtract(lines[i], tmp, out=lines[i])
        multiply(lines[i], inv, out=lines[i])
    for i in range(n - 2, -1, -1):
        multiply(lines[i + 1], cprime[i], out=tmp)
        subtract(lines[i], tmp, out=lines[i])


def lod_scratch_size(shape) -> int:
    """Number of elements of the scratch buffer :func:`lod_diffuse` needs for a lattice of ``shape``."""
    size = int(np.prod(shape))
    return 5 * size + 3 * max(size // int(n) for n in shape)


def _axis_solves(field, axes, decay_share, share, src_share, scratch, slabs, xp) -> None:
    """One LOD step in the given axis order, in place (see :func:`lod_diffuse`)."""
    size, ndim = field.size, field.ndim
    for position, f in enumerate(axes):
        gain = (1.0 + decay_share) ** (len(axes) - 1 - position)
        lines = xp.moveaxis(field, f.axis, 0)
        slab_size = size // field.shape[f.axis]
        slab_shape = lines.shape[1:]
        tmp = slabs[:slab_size].reshape(slab_shape)
        inv = slabs[slab_size : 2 * slab_size].reshape(slab_shape)
        work = lines
        sink = xp.moveaxis(share, f.axis, 0) if share is not None else None
        transposed = f.axis == ndim - 1 and ndim > 1
        if transposed:
            work = scratch[:size].reshape(lines.shape)
            xp.copyto(work, lines)
        _add_dirichlet(work, f, gain, gain)
        if src_share is not None:
            work += xp.moveaxis(src_share, f.axis, 0)
        if sink is None:
            _sweep_static(work, f, tmp, xp)
        else:
            # c'_i is written into the kappa buffer (free once the shares are computed); on the transposed
            # axis the share is copied there first and c'_i overwrites s_i after s_i has been read.
            cprime = scratch[size : 2 * size].reshape(lines.shape)
            if transposed:
                xp.copyto(cprime, sink)
                sink = cprime
            _sweep_sink(work, f, sink, cprime, tmp, inv, xp)
        if transposed:
            xp.copyto(lines, work)


def _line_solves(start, out, factors: LODFactors, axes, decay_share, share, src_share, cprime, blend) -> None:
    """One LOD step in the given axis order with one line-solve launch per axis (see :func:`lod_diffuse`).

    The first solve reads ``start`` and writes ``out`` (they may be the same array), the later ones work on
    ``out`` in place; the last writes the mean with ``blend`` when it is given.
    """
    shape, real = factors.shape, factors.dtype.type
    name = lod_lines.kernel_name(factors.dtype)
    for position, f in enumerate(axes):
        gain = (1.0 + decay_share) ** (len(axes) - 1 - position)
        n = shape[f.axis]
        lines = lod_lines.line_count(shape, f.axis)
        pivots_here = share is not None or f.table is None
        args = (start, out, blend if position == len(axes) - 1 else None, share, src_share,
                cprime if pivots_here else None, f.table, f.faces, real(decay_share),
                real(f.boundary_low * gain), real(f.boundary_high * gain),
                np.int64(n), np.int64(int(np.prod(shape[f.axis + 1 :]))), np.int64(lines))
        factors.launch(name, lines, args)
        start = out


def _line_step(field, factors: LODFactors, decay_share, share, src_share, scratch):
    """:func:`lod_diffuse` with :class:`AxisLines` factors: one kernel launch per axis solve."""
    size = field.size
    cprime = scratch[:size].reshape(field.shape)
    if share is None:
        _line_solves(field, field, factors, factors.axes, decay_share, None, src_share, cprime, None)
        return field
    # Forward order from field into other, then the reversed order in place, whose last solve writes the mean.
    other = scratch[4 * size : 5 * size].reshape(field.shape)
    _line_solves(field, other, factors, factors.axes, decay_share, share, src_share, cprime, None)
    _line_solves(field, field, factors, factors.axes[::-1], decay_share, share, src_share, cprime, other)
    return field


def lod_diffuse(field, factors: LODFactors, scratch=None, sink_per_min=None, source=None):
    """Advance ``field`` by one LOD reaction-diffusion step, in place.

    Parameters
    ----------
    field : array, shape ``factors.shape``, dtype ``factors.dtype``
        Concentration (any unit); overwritten with the new values.
    factors : LODFactors
        From :func:`lod_factors`, built for this shape, dtype and time step.
    scratch : array, optional
        Flat buffer of at least :func:`lod_scratch_size` elements of the field dtype, reused across calls.
    sink_per_min : array, optional
        Per-voxel first-order sink ``K`` (1/min), e.g. uptake by cells or relaxation of vessel voxels toward
        blood (whose target enters through ``source``). Applied implicitly, inside each axis solve.
    source : array, optional
        Per-voxel zero-order source ``Q`` (field unit per min).

    Returns
    -------
    array
        ``field`` itself.

    Notes
    -----
    With :class:`AxisFactors` (NumPy) the sweep along the last (unit-stride) axis runs on a transposed copy in
    ``scratch``: sweeping that axis in place touches one element per cache line, and one transposed copy each way
    costs less.

    With :class:`AxisLines` (CuPy) each axis solve is one launch of the line-solve kernel, one thread per lattice
    line; the Dirichlet inflow, the source share and (with a sink) the mean of the two axis orders happen inside
    it. Launches per field and step, on a ``d``-dimensional lattice with ``n`` voxels along each axis:

    - no per-voxel sink: ``d`` kernel launches, plus one element-wise product forming the source share when
      ``source`` is given (4 in 3-D). The plane loop took ``5 n - 4`` array operations per axis, plus the
      inflow, source and transposition operations: about 1,500 launches at 100³;
    - per-voxel sink: ``2 d`` kernel launches plus 11 element-wise operations forming the reaction shares
      (17 in 3-D). The plane loop took ``10 n - 6`` per axis and order, plus the same extras: about 6,000 at
      100³.

    On the last axis the threads of a warp walk lines ``n`` elements apart (uncoalesced, served from cache);
    the other axes are coalesced.
    """
    xp = array_namespace(field)
    if tuple(field.shape) != factors.shape or field.dtype != factors.dtype:
        raise ValueError(
            f"field is {tuple(field.shape)} {field.dtype}, factors were built for {factors.shape} {factors.dtype}"
        )
    need = lod_scratch_size(field.shape)
    if scratch is None or scratch.size < need or scratch.dtype != field.dtype:
        scratch = xp.empty(need, dtype=field.dtype)
    size, ndim, dt = field.size, field.ndim, factors.dt_min
    share = src_share = None
    # The uniform decay takes the consistent share s(lambda dt) of reaction_share in every solve (it is folded
    # into the static factors); a per-voxel sink K, which varies from voxel to voxel, takes the plain share
    # K dt / d on top of it.
    lam_dt = factors.decay_per_min * dt
    decay_share = float(reaction_share(lam_dt, ndim, np))
    if sink_per_min is not None:
        share = scratch[2 * size : 3 * size].reshape(field.shape)
        xp.multiply(sink_per_min, dt / ndim, out=share)
        share += decay_share
    if source is not None:
        # A source accompanies its sink (a vessel relaxing toward blood pO2): shared like the sink, so that a
        # voxel dominated by its own reaction reaches the reaction's fixed point Q / (K + lambda) in every solve.
        src_share = scratch[3 * size : 4 * size].reshape(field.shape)
        if share is not None:
            kappa = scratch[size : 2 * size].reshape(field.shape)
            xp.multiply(sink_per_min, dt, out=kappa)
            kappa += lam_dt
            positive = kappa > 1e-12
            xp.divide(share, xp.where(positive, kappa, 1.0), out=src_share)
            src_share[...] = xp.where(positive, src_share, 1.0 / ndim)
            src_share *= source
            src_share *= dt
        else:
            ratio = decay_share / lam_dt if lam_dt > 1e-12 else 1.0 / ndim
            xp.multiply(source, dt * ratio, out=src_share)
    if factors.launch is not None:
        if not field.flags.c_contiguous:
            raise ValueError("the line-solve kernel needs a C-contiguous field")
        return _line_step(field, factors, decay_share, share, src_share, scratch)
    slabs = scratch[5 * size :]
    if sink_per_min is None:
        _axis_solves(field, factors.axes, decay_share, None, src_share, scratch, slabs, xp)
        return field
    # With a per-voxel sink the product splitting favours the axis solved last: the last solve applies its share
    # of the sink line by line, so the field comes out smooth along that axis and streaky across it. Averaging
    # the forward and the reversed axis order (Strang-Marchuk symmetrisation) removes the directional bias.
    other = scratch[4 * size : 5 * size].reshape(field.shape)
    xp.copyto(other, field)
    _axis_solves(field, factors.axes, decay_share, share, src_share, scratch, slabs, xp)
    _axis_solves(other, factors.axes[::-1], decay_share, share, src_share, scratch, slabs, xp)
    field += other
    field *= 0.5
    return field


def implicit_reactions(field, dt_min: float, decay_per_min=0.0, uptake_per_min=None, supply_per_min=None,
                       supply_target=None, source=None):
    """Backward-Euler step of pointwise linear reactions alone, in place (no diffusion).

    Solves ``dc/dt = -lambda c - U c + S (c* - c) + Q`` voxel by voxel:
    ``c_new = (c + dt (S c* + Q)) / (1 + dt (lambda + U + S))``, then clips at zero. For non-diffusing
    fields (e.g. ECM density) and for checks; diffusing fields put their sinks into :func:`lod_diffuse`.

    Parameters
    ----------
    field : array
        Concentration; overwritten.
    dt_min : float
        Time step (min).
    decay_per_min : float
        Uniform first-order decay ``lambda`` (1/min).
    uptake_per_min : array or None
        Per-voxel first-order uptake ``U`` (1/min).
    supply_per_min : array or None
        Per-voxel relaxation rate ``S`` (1/min) toward ``supply_target``.
    supply_target : float or array or None
        The value ``c*`` that supply relaxes toward (field unit).
    source : array or None
        Per-voxel zero-order source ``Q`` (field unit per minute).

    Returns
    -------
    array
        ``field`` itself.
    """
    xp = array_namespace(field, uptake_per_min, supply_per_min, source)
    denom = None
    if uptake_per_min is not None:
        denom = uptake_per_min * dt_min
    if supply_per_min is not None:
        s_dt = supply_per_min * dt_min
        denom = s_dt if denom is None else denom + s_dt
        field += s_dt * supply_target
    if source is not None:
        field += source * dt_min
    if denom is None:
        field *= 1.0 / (1.0 + decay_per_min * dt_min)
    else:
        denom += 1.0 + decay_per_min * dt_min
        xp.divide(field, denom, out=field)
    xp.maximum(field, 0, out=field)
    return field
