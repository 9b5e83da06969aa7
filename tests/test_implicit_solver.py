"""Checks of the unsplit implicit solver (``kernels.implicit``): exact sparse solves and the analytic answers.

The solver's step is backward Euler on the whole operator, ``(I - dt div D grad + dt (lambda + K)) c1 = c0 + dt Q
+ b``, with the discretisation of the LOD scheme (cell centres at ``(i + 1/2) dx``, harmonic face conductances,
Dirichlet value on the lattice boundary with conductance ``2 D``). So

- against an independent float64 assembly of that matrix solved by ``spsolve`` it agrees to the tolerance;
- the analytic checks of ``test_diffusion.py`` hold, with the unsplit answers where they differ from LOD's: a
  product cosine mode decays by ``(1 + dt sum mu_a) ** -n`` rather than ``prod (1 + dt mu_a) ** -n``, and the
  steady state of the step map is the exact discrete steady state for decay *and* per-voxel sinks at any dt.

Lattice, profile and analytic helpers are imported from ``test_diffusion``. Solves whose answer is known to
round-off run at a tight tolerance (``TIGHT``); the oxygen-like problems run at the default tolerance.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as spla
from conftest import to_host
from test_diffusion import (
    COS_LENGTH,
    COS_TIME,
    D0,
    DX,
    STEADY_DECAY,
    STEADY_X,
    along,
    centres,
    cosh_profile,
    discrete_decay_profile,
    eps,
    line_shape,
    no_flux,
    observed_orders,
    random_field,
)

from kernels.implicit import (
    DEFAULT_TOLERANCE,
    implicit_diffuse,
    implicit_factors,
    implicit_matrix,
    implicit_scratch_size,
)

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
NDIMS = pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
AXES = pytest.mark.parametrize(
    ("ndim", "axis"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)], ids=["2d-ax0", "2d-ax1", "3d-ax0", "3d-ax1", "3d-ax2"]
)
TIGHT = {np.float32: 2e-6, np.float64: 1e-11}  # float32 stops at 16 eps ~ 1.9e-6 anyway

# The oxygen problem: PhysiCell values at the agent step (K dt = 60 in the tumour, 600 in vessels).
O2_D, O2_DX, O2_DT, O2_DECAY, O2_FAR = 1e5, 20.0, 6.0, 0.1, 38.0
UPTAKE, SUPPLY = 10.0, 100.0
SMALL = {2: (40, 40), 3: (16, 16, 16)}
ODD = {2: (37, 23), 3: (13, 9, 11)}


def tight(dtype) -> float:
    return TIGHT[np.dtype(dtype).type]


def line_of(field, axis):
    """Host float64 profile along ``axis``, as ``test_diffusion.line_of`` but uniform across only to the solver's
    round-off: the iterative solve does not reproduce the transverse symmetry bit for bit."""
    h = np.moveaxis(to_host(field).astype(np.float64), axis, 0).reshape(field.shape[axis], -1)
    spread = float(np.abs(h - h[:, :1]).max())
    assert spread <= 4 * tight(field.dtype) * max(1.0, float(np.abs(h).max())), f"not uniform across: {spread}"
    return h[:, 0]


def solve_steps(field, factors, nsteps, tolerance, sink=None, source=None):
    """``nsteps`` implicit steps in place; returns the list of SolveInfo."""
    infos = [implicit_diffuse(field, factors, sink_per_min=sink, source=source, tolerance=tolerance,
                              max_iterations=200) for _ in range(nsteps)]
    assert all(info.converged for info in infos), infos
    return infos


# ---------------------------------------------------------------------------------------------------------------
# Exact sparse solve of the same discrete problem
# ---------------------------------------------------------------------------------------------------------------


def reference_system(c0, spacing, dt, diffusivity, boundaries, decay, sink, source):
    """Float64 matrix and right-hand side of one backward-Euler step, assembled face by face from the definition
    (independently of the kernel): harmonic-mean interior conductances, ``2 D`` at a Dirichlet face."""
    shape = c0.shape
    size = c0.size
    d = np.broadcast_to(np.asarray(diffusivity, dtype=np.float64), shape)
    r = dt / spacing**2
    index = np.arange(size).reshape(shape)
    diag = (1.0 + dt * (decay + sink)).ravel().astype(np.float64)
    rhs = (c0 + dt * source).ravel().astype(np.float64)
    rows, cols, vals = [], [], []
    for axis, (low, high) in enumerate(boundaries):
        a = np.moveaxis(index, axis, 0)
        da = np.moveaxis(d, axis, 0)
        for i in range(shape[axis] - 1):
            g = r * 2 * da[i] * da[i + 1] / (da[i] + da[i + 1])
            for p, q in ((a[i], a[i + 1]), (a[i + 1], a[i])):
                np.add.at(diag, p.ravel(), g.ravel())
                rows.append(p.ravel())
                cols.append(q.ravel())
                vals.append(-g.ravel())
        for value, i in ((low, 0), (high, shape[axis] - 1)):
            if value is not None:
                g = r * 2 * da[i]
                np.add.at(diag, a[i].ravel(), g.ravel())
                np.add.at(rhs, a[i].ravel(), (g * value).ravel())
    rows.append(np.arange(size))
    cols.append(np.arange(size))
    vals.append(diag)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), (size, size))
    return matrix, rhs


def oxygen_problem(shape, varying, seed=0):
    """Tumour disc/ball (K = 10/min), a few vessel voxels (K = 100/min, Q = 3800 mmHg/min), D uniform or
    varying; host float64 arrays."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    tumour = np.sqrt(sum(g**2 for g in grids)) <= min(shape) / 4
    vessels = (rng.random(shape) < 0.02) & ~tumour
    sink = UPTAKE * tumour + SUPPLY * vessels
    source = SUPPLY * O2_FAR * vessels
    diffusivity = O2_D * rng.uniform(0.3, 2.0, shape) if varying else O2_D
    assert (sink * O2_DT >= 60).sum() == tumour.sum() + vessels.sum() and vessels.sum() >= 3
    return sink, source, diffusivity


def oxygen_boundaries(ndim):
    """Dirichlet 38 mmHg on both faces of axis 0 and the high face of axis 1; the rest no-flux."""
    return [(O2_FAR, O2_FAR), (None, O2_FAR)] + no_flux(ndim - 2)


@NDIMS
@DTYPES
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
@pytest.mark.parametrize("sizes", ["small", "odd"])
def test_matches_exact_sparse_solve(xp, ndim, dtype, varying, sizes):
    shape = (SMALL if sizes == "small" else ODD)[ndim]
    sink, source, diffusivity = oxygen_problem(shape, varying)
    bounds = oxygen_boundaries(ndim)
    c0 = np.random.default_rng(1).uniform(0.0, O2_FAR, shape)
    matrix, rhs = reference_system(c0, O2_DX, O2_DT, diffusivity, bounds, O2_DECAY, sink, source)
    exact = spla.spsolve(matrix.tocsc(), rhs).reshape(shape)

    d_dev = diffusivity if np.ndim(diffusivity) == 0 else xp.asarray(diffusivity)
    factors = implicit_factors(shape, O2_DX, O2_DT, d_dev, bounds, dtype=dtype, xp=xp, decay_per_min=O2_DECAY)
    sink_dev, source_dev = xp.asarray(sink.astype(dtype)), xp.asarray(source.astype(dtype))
    # The kernel's own sparse matrix (for comparisons) is the same matrix.
    kernel_matrix, kernel_rhs = implicit_matrix(c0.astype(dtype), factors, sink_dev, source_dev)
    scale = abs(matrix).max()
    assert abs(kernel_matrix - matrix).max() <= 8 * eps(dtype) * scale
    np.testing.assert_allclose(kernel_rhs, rhs, rtol=8 * eps(dtype), atol=8 * eps(dtype) * O2_FAR)

    field = xp.asarray(c0.astype(dtype))
    info = implicit_diffuse(field, factors, sink_per_min=sink_dev, source=source_dev)
    assert info.converged and info.residual <= DEFAULT_TOLERANCE and info.iterations > 0
    err = np.abs(to_host(field).astype(np.float64) - exact).max()
    assert err < 0.5, err  # the requirement
    assert err < 0.1, err  # what the default tolerance gives (0.01-0.05 mmHg measured)

    field = xp.asarray(c0.astype(dtype))
    info = implicit_diffuse(field, factors, sink_per_min=sink_dev, source=source_dev, tolerance=tight(dtype))
    assert info.converged, info
    np.testing.assert_allclose(to_host(field).astype(np.float64), exact, rtol=0, atol=200 * tight(dtype) * O2_FAR)


# ---------------------------------------------------------------------------------------------------------------
# Cosine modes between no-flux walls
# ---------------------------------------------------------------------------------------------------------------


def cosine_run(xp, ndim, axis, dtype, n, nsteps, length=COS_LENGTH, t_end=COS_TIME):
    """``1 + cos(pi x / L)`` along ``axis`` (the setting of ``test_diffusion.cosine_run``), implicit solver."""
    dx, dt = length / n, t_end / nsteps
    x = centres(n, dx)
    shape = line_shape(n, ndim, axis)
    c = along(1.0 + np.cos(np.pi * x / length), shape, axis, xp, dtype)
    factors = implicit_factors(shape, dx, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    solve_steps(c, factors, nsteps, tight(dtype))
    analytic = 1.0 + np.cos(np.pi * x / length) * np.exp(-D0 * np.pi**2 * t_end / length**2)
    mu = 4.0 * D0 / dx**2 * np.sin(np.pi * dx / (2.0 * length)) ** 2
    discrete = 1.0 + np.cos(np.pi * x / length) * (1.0 + dt * mu) ** (-nsteps)
    return line_of(c, axis), analytic, discrete


@AXES
@DTYPES
def test_cosine_mode_no_flux(xp, ndim, axis, dtype):
    got, analytic, discrete = cosine_run(xp, ndim, axis, dtype, n=64, nsteps=50)
    np.testing.assert_allclose(got, analytic, rtol=0, atol=2e-3)
    np.testing.assert_allclose(got, discrete, rtol=0, atol=3e-5 if dtype == np.float32 else 1e-9)


@NDIMS
@DTYPES
def test_product_cosine_mode_unsplit(xp, ndim, dtype):
    """``1 + prod_a cos(pi x_a / L_a)``: the unsplit step divides the mode by ``1 + dt sum_a mu_a``."""
    shape = (16, 12) if ndim == 2 else (12, 10, 8)
    lengths = [n * DX for n in shape]
    t_end, nsteps = 2.0, 40
    dt = t_end / nsteps
    grids = np.meshgrid(*[centres(n, DX) for n in shape], indexing="ij")
    mode = np.prod([np.cos(np.pi * g / ln) for g, ln in zip(grids, lengths)], axis=0)
    c = xp.asarray((1.0 + mode).astype(dtype))
    factors = implicit_factors(shape, DX, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    solve_steps(c, factors, nsteps, tight(dtype))
    got = to_host(c).astype(np.float64)
    rate = sum(np.pi**2 / ln**2 for ln in lengths)
    np.testing.assert_allclose(got, 1.0 + mode * np.exp(-D0 * rate * t_end), rtol=0, atol=1e-2)
    mu = sum(4.0 * D0 / DX**2 * np.sin(np.pi * DX / (2.0 * ln)) ** 2 for ln in lengths)
    np.testing.assert_allclose(got, 1.0 + mode * (1.0 + dt * mu) ** (-nsteps), rtol=0,
                               atol=3e-5 if dtype == np.float32 else 1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Steady decay profiles at any dt: decay in the factors, a uniform sink array, and the steady solve
# ---------------------------------------------------------------------------------------------------------------


@AXES
@DTYPES
@pytest.mark.parametrize("lam_dt", [0.04, 1.0, 60.0])
@pytest.mark.parametrize("mode", ["decay", "sink", "steady"])
def test_steady_decay_profile_any_dt(xp, ndim, axis, dtype, lam_dt, mode):
    """Dirichlet 1 at the low face of ``axis``: the fixed point of the step map is the exact discrete steady
    state ``discrete_decay_profile`` for any ``lambda dt``, whether the rate is a decay or a uniform sink array
    (LOD's sink share misses it by O(K dt)); ``steady=True`` reaches it in one solve from zero."""
    n = 64
    dx = STEADY_X / n
    dt = lam_dt / STEADY_DECAY
    shape = line_shape(n, ndim, axis)
    bounds = no_flux(ndim)
    bounds[axis] = (1.0, None)
    decay = STEADY_DECAY if mode != "sink" else 0.0
    factors = implicit_factors(shape, dx, dt, D0, bounds, dtype=dtype, xp=xp, decay_per_min=decay,
                               steady=mode == "steady")
    sink = xp.full(shape, STEADY_DECAY, dtype=dtype) if mode == "sink" else None
    expected = discrete_decay_profile(n, dx, D0, STEADY_DECAY, 1.0)
    tol = 2e-5 if dtype == np.float32 else 1e-9
    if mode == "steady":
        c = xp.zeros(shape, dtype=dtype)
        solve_steps(c, factors, 1, tight(dtype), sink=sink)
    else:  # a fixed point: the exact profile stays
        c = along(expected, shape, axis, xp, dtype)
        solve_steps(c, factors, 3, tight(dtype), sink=sink)
    np.testing.assert_allclose(line_of(c, axis), expected, rtol=0, atol=tol)
    np.testing.assert_allclose(line_of(c, axis), cosh_profile(centres(n, dx), STEADY_X, 1.0, D0, STEADY_DECAY),
                               rtol=0, atol=1.5e-3)


# ---------------------------------------------------------------------------------------------------------------
# Mass balance under no-flux faces
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
def test_mass_balance_no_flux(xp, ndim, dtype, varying):
    """No decay: the sum is conserved, and a source adds ``sum(Q) dt`` per step, to the solver tolerance.

    The column sums of the no-flux operator are those of ``I``, so ``sum(c1) = sum(rhs) - sum(residual)``."""
    rng = np.random.default_rng(11)
    shape = (16, 12) if ndim == 2 else (10, 8, 6)
    diffusivity = xp.asarray(D0 * rng.uniform(0.1, 2.0, shape)) if varying else D0
    factors = implicit_factors(shape, DX, 0.5, diffusivity, no_flux(ndim), dtype=dtype, xp=xp)
    c = random_field(rng, shape, xp, dtype)
    source = rng.uniform(0.0, 2.0, shape).astype(dtype)
    mass = float(to_host(c).astype(np.float64).sum())
    nsteps = 5
    solve_steps(c, factors, nsteps, tight(dtype))
    rtol = 2e-5 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(float(to_host(c).astype(np.float64).sum()), mass, rtol=rtol)
    solve_steps(c, factors, nsteps, tight(dtype), source=xp.asarray(source))
    expected = mass + nsteps * 0.5 * float(source.astype(np.float64).sum())
    np.testing.assert_allclose(float(to_host(c).astype(np.float64).sum()), expected, rtol=rtol)


# ---------------------------------------------------------------------------------------------------------------
# Convergence orders
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
def test_first_order_in_time(xp, ndim, dtype):
    errors = []
    for nsteps in (10, 20, 40):
        got, analytic, _ = cosine_run(xp, ndim, ndim - 1, dtype, 64, nsteps)
        errors.append(np.abs(got - analytic).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 0.8 < order < 1.3, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 1.1e-3, errors


@NDIMS
@DTYPES
def test_second_order_in_space(xp, ndim, dtype):
    errors = []
    for n, nsteps in ((8, 4), (16, 16), (32, 64)):
        got, analytic, _ = cosine_run(xp, ndim, 0, dtype, n, nsteps)
        errors.append(np.abs(got - analytic).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 1.7 < order < 2.4, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 9e-4, errors


@NDIMS
@DTYPES
def test_second_order_in_space_dirichlet(xp, ndim, dtype):
    """The steady profile behind a half-voxel Dirichlet face converges to the cosh at second order."""
    errors = []
    for n in (16, 32, 64):
        dx = STEADY_X / n
        shape = line_shape(n, ndim, 0)
        bounds = [(1.0, None)] + no_flux(ndim - 1)
        factors = implicit_factors(shape, dx, 5.0, D0, bounds, dtype=dtype, xp=xp, decay_per_min=STEADY_DECAY,
                                   steady=True)
        c = xp.zeros(shape, dtype=dtype)
        solve_steps(c, factors, 1, tight(dtype))
        errors.append(np.abs(line_of(c, 0) - cosh_profile(centres(n, dx), STEADY_X, 1.0, D0, STEADY_DECAY)).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 1.7 < order < 2.4, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 1.3e-3, errors  # float64 gives 1.17e-3 (the half-voxel face, lambda dx^2 / (8 D))


# ---------------------------------------------------------------------------------------------------------------
# Stability and positivity at huge D dt / dx^2
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize("ratio", [1e4, 1e5], ids=["r1e4", "r1e5"])
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
def test_stable_at_huge_ratio_no_flux(xp, ndim, dtype, ratio, varying):
    """Random data, no-flux faces: bounded by its initial extremes (maximum principle) up to the tolerance."""
    rng = np.random.default_rng(5)
    shape = (16, 12) if ndim == 2 else (8, 7, 6)
    diffusivity = xp.asarray(D0 * rng.uniform(0.2, 2.0, shape)) if varying else D0
    factors = implicit_factors(shape, DX, ratio * DX**2 / D0, diffusivity, no_flux(ndim), dtype=dtype, xp=xp)
    c = random_field(rng, shape, xp, dtype)
    host0 = to_host(c).astype(np.float64)
    solve_steps(c, factors, 5, DEFAULT_TOLERANCE)
    got = to_host(c).astype(np.float64)
    assert np.isfinite(got).all()
    slack = 4 * DEFAULT_TOLERANCE * host0.max()
    assert got.min() >= host0.min() - slack
    assert got.max() <= host0.max() + slack
    np.testing.assert_allclose(got, host0.mean(), rtol=0, atol=slack)  # fully mixed


@NDIMS
@DTYPES
def test_sink_keeps_field_within_bounds(xp, ndim, dtype):
    """Huge per-voxel sinks (K dt up to 1e3) next to Dirichlet faces: no negative values, no overshoot."""
    rng = np.random.default_rng(14)
    shape = (16, 12) if ndim == 2 else (10, 8, 6)
    factors = implicit_factors(shape, DX, 10.0, D0, [(1.0, 0.5)] * ndim, dtype=dtype, xp=xp)
    sink = xp.asarray((rng.uniform(0.0, 100.0, shape) * (rng.uniform(size=shape) < 0.3)).astype(dtype))
    c = random_field(rng, shape, xp, dtype)
    for _ in range(5):
        solve_steps(c, factors, 1, DEFAULT_TOLERANCE, sink=sink)
        got = to_host(c).astype(np.float64)
        assert np.isfinite(got).all()
        assert got.min() >= -2 * DEFAULT_TOLERANCE
        assert got.max() <= 1.0 + 2 * DEFAULT_TOLERANCE


# ---------------------------------------------------------------------------------------------------------------
# Spatially varying D
# ---------------------------------------------------------------------------------------------------------------


@AXES
@DTYPES
def test_two_region_steady_flux_continuous(xp, ndim, axis, dtype):
    """High D left, low D right, Dirichlet faces: the exact piecewise-linear profile of series resistances."""
    n, m = 20, 8
    d_left, d_right, c_left, c_right = 2000.0, 200.0, 1.0, 0.2
    d_line = np.where(np.arange(n) < m, d_left, d_right)
    shape = line_shape(n, ndim, axis)
    bounds = no_flux(ndim)
    bounds[axis] = (c_left, c_right)
    factors = implicit_factors(shape, DX, 10.0, along(d_line, shape, axis, xp, np.float64), bounds, dtype=dtype,
                               xp=xp, steady=True)
    c = xp.zeros(shape, dtype=dtype)
    solve_steps(c, factors, 1, tight(dtype))
    flux = (c_left - c_right) / (m * DX / d_left + (n - m) * DX / d_right)
    x = centres(n, DX)
    expected = np.where(x < m * DX, c_left - flux * x / d_left, c_right + flux * (n * DX - x) / d_right)
    np.testing.assert_allclose(line_of(c, axis), expected, rtol=0, atol=2e-5 if dtype == np.float32 else 1e-9)


@NDIMS
@DTYPES
def test_constant_array_matches_scalar_diffusivity(xp, ndim, dtype):
    rng = np.random.default_rng(7)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    bounds = [(1.0, None), (None, 0.3)] + no_flux(ndim - 2)
    c0 = random_field(rng, shape, xp, dtype)
    results = []
    for diffusivity in (D0, xp.full(shape, D0)):
        c = c0.copy()
        factors = implicit_factors(shape, DX, 0.7, diffusivity, bounds, dtype=dtype, xp=xp, decay_per_min=0.05)
        solve_steps(c, factors, 3, tight(dtype))
        results.append(to_host(c).astype(np.float64))
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=20 * tight(dtype))


# ---------------------------------------------------------------------------------------------------------------
# Sources and sinks
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize("k_dt", [0.1, 60.0])
def test_uniform_sink_and_source_reach_equilibrium(xp, ndim, dtype, k_dt):
    """No-flux box, uniform K and Q: every voxel relaxes to Q / K; a uniform field exactly by
    ``c1 = (c0 + dt Q) / (1 + dt K)``."""
    rng = np.random.default_rng(12)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    sink_rate, source_rate = 0.5, 2.0
    dt = k_dt / sink_rate
    factors = implicit_factors(shape, DX, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    sink = xp.full(shape, sink_rate, dtype=dtype)
    source = xp.full(shape, source_rate, dtype=dtype)
    uniform = xp.full(shape, 10.0, dtype=dtype)
    solve_steps(uniform, factors, 1, tight(dtype), sink=sink, source=source)
    np.testing.assert_allclose(to_host(uniform), (10.0 + dt * source_rate) / (1.0 + k_dt), rtol=4 * tight(dtype))
    c = random_field(rng, shape, xp, dtype, 0.0, 10.0)
    solve_steps(c, factors, int(10 + 40 / k_dt), tight(dtype), sink=sink, source=source)
    np.testing.assert_allclose(to_host(c).astype(np.float64), source_rate / sink_rate, rtol=100 * tight(dtype))


@NDIMS
@DTYPES
def test_reactions_without_diffusion_closed_form(xp, ndim, dtype):
    """``D = 0``: each voxel takes the backward-Euler reaction step ``(c + dt Q) / (1 + dt (lambda + K))``."""
    rng = np.random.default_rng(18)
    shape = (7, 6) if ndim == 2 else (6, 5, 4)
    dt, lam = 30.0, 0.3
    sink = (rng.uniform(0.0, 3.0, shape) * (rng.uniform(size=shape) < 0.7)).astype(dtype)
    source = rng.uniform(0.0, 2.0, shape).astype(dtype)
    c0 = rng.uniform(0.0, 1.0, shape).astype(dtype)
    factors = implicit_factors(shape, DX, dt, 0.0, [(1.0, 0.5)] * ndim, dtype=dtype, xp=xp, decay_per_min=lam)
    c = xp.asarray(c0.copy())
    solve_steps(c, factors, 1, tight(dtype), sink=xp.asarray(sink), source=xp.asarray(source))
    sink, source, c0 = (v.astype(np.float64) for v in (sink, source, c0))
    expected = (c0 + dt * source) / (1.0 + dt * (lam + sink))
    np.testing.assert_allclose(to_host(c).astype(np.float64), expected, rtol=4 * tight(dtype), atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Warm start, tolerance and reporting
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
def test_warm_start_halves_iterations(xp, ndim, dtype):
    """The oxygen problem from 38 mmHg: the second step, warm-started from the first, needs at most half the
    iterations; a few steps later the field is stationary and a step takes no iteration."""
    shape = SMALL[ndim]
    sink, source, _ = oxygen_problem(shape, varying=False)
    factors = implicit_factors(shape, O2_DX, O2_DT, O2_D, oxygen_boundaries(ndim), dtype=dtype, xp=xp,
                               decay_per_min=O2_DECAY)
    field = xp.full(shape, O2_FAR, dtype=dtype)
    scratch = xp.empty(implicit_scratch_size(shape), dtype=dtype)
    sink, source = xp.asarray(sink.astype(dtype)), xp.asarray(source.astype(dtype))
    first = implicit_diffuse(field, factors, scratch, sink, source)
    second = implicit_diffuse(field, factors, scratch, sink, source)
    assert first.iterations >= 2 and 2 * second.iterations <= first.iterations, (first, second)
    for _ in range(10):
        last = implicit_diffuse(field, factors, scratch, sink, source)
    before = to_host(field).copy()
    again = implicit_diffuse(field, factors, scratch, sink, source)
    assert last.iterations == again.iterations == 0, (last, again)
    np.testing.assert_array_equal(to_host(field), before)
    forced = implicit_diffuse(field, factors, scratch, sink, source, min_iterations=1)
    assert forced.iterations == 1


@NDIMS
@DTYPES
def test_tolerance_honoured_and_reported(xp, ndim, dtype):
    """The reported residual is below the tolerance, the iterations grow as it tightens, the error against the
    exact step follows it, and the iteration cap is reported as non-convergence."""
    shape = SMALL[ndim]
    sink, source, diffusivity = oxygen_problem(shape, varying=True)
    bounds = oxygen_boundaries(ndim)
    c0 = np.full(shape, O2_FAR)
    matrix, rhs = reference_system(c0, O2_DX, O2_DT, diffusivity, bounds, O2_DECAY, sink, source)
    exact = spla.spsolve(matrix.tocsc(), rhs).reshape(shape)
    factors = implicit_factors(shape, O2_DX, O2_DT, xp.asarray(diffusivity), bounds, dtype=dtype, xp=xp,
                               decay_per_min=O2_DECAY)
    sink, source = xp.asarray(sink.astype(dtype)), xp.asarray(source.astype(dtype))
    iterations = []
    for tolerance in (1e-2, 1e-3, 1e-4, 1e-5):
        field = xp.asarray(c0.astype(dtype))
        info = implicit_diffuse(field, factors, sink_per_min=sink, source=source, tolerance=tolerance)
        assert info.converged and isinstance(info.iterations, int) and 0 < info.residual <= tolerance, info
        err = np.abs(to_host(field).astype(np.float64) - exact).max()
        assert err <= 3 * tolerance * O2_FAR, (tolerance, err)  # the estimate is within 3x of the true error
        iterations.append(info.iterations)
    assert iterations == sorted(iterations) and iterations[-1] > iterations[0], iterations
    field = xp.asarray(c0.astype(dtype))
    capped = implicit_diffuse(field, factors, sink_per_min=sink, source=source, tolerance=1e-5, max_iterations=1)
    assert capped.iterations == 1 and not capped.converged and capped.residual > 1e-5


@NDIMS
@DTYPES
def test_scratch_optional_and_results_identical(xp, ndim, dtype):
    rng = np.random.default_rng(10)
    shape = (9, 6) if ndim == 2 else (7, 6, 5)
    factors = implicit_factors(shape, DX, 0.4, xp.asarray(D0 * rng.uniform(0.5, 1.5, shape)), [(0.5, None)] * ndim,
                               dtype=dtype, xp=xp)
    c0 = random_field(rng, shape, xp, dtype)
    sink = random_field(rng, shape, xp, dtype, 0.0, 5.0)
    results = []
    for scratch in (None, xp.empty(implicit_scratch_size(shape), dtype=dtype), xp.empty(3, dtype=dtype)):
        c = c0.copy()
        implicit_diffuse(c, factors, scratch, sink_per_min=sink)
        results.append(to_host(c))
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


@NDIMS
@DTYPES
def test_validation(xp, ndim, dtype):
    shape = (6,) * ndim
    with pytest.raises(ValueError, match=f"boundaries has {ndim + 1} axes"):
        implicit_factors(shape, DX, 0.1, D0, no_flux(ndim + 1), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=r"got -12\.5"):
        implicit_factors(shape, DX, 0.1, -12.5, no_flux(ndim), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=r"got 10\.0 and 0\.0"):
        implicit_factors(shape, DX, 0.0, D0, no_flux(ndim), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=r"-0\.25"):
        implicit_factors(shape, DX, 0.1, D0, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=-0.25)
    factors = implicit_factors(shape, DX, 0.1, D0, no_flux(ndim), dtype=dtype, xp=xp)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match=re.escape(f"field is {shape} {np.dtype(other).name}")):
        implicit_diffuse(xp.zeros(shape, dtype=other), factors)
    assert math.prod(shape) < implicit_scratch_size(shape)
