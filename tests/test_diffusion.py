"""Analytic checks of the LOD diffusion solver and the implicit reaction step (``kernels.diffusion``).

Conventions of the scheme under test: a cell-centred lattice with voxel centres at ``x_i = (i + 1/2) dx``; a
Dirichlet face holds its value on the lattice boundary (``x = 0`` or ``x = n dx``); diffusion is advanced by
backward-Euler LOD sweeps and the linear reactions by a backward-Euler step per voxel (Lie splitting).

Reactions can also sit inside the LOD solves. With ``d`` axes, a uniform decay ``lambda`` (folded into the
factors) gives each axis solve the consistent share ``s``, the root of ``1 + s - (1 + s) ** -(d - 1) = lambda dt``,
and the Dirichlet inflow of axis ``k`` is multiplied by ``(1 + s) ** (d - 1 - k)``: the steady state of a profile
along any one axis is then exact at any ``dt``. A per-voxel sink ``K`` adds the plain share ``K dt / d`` on top of
``s`` (no inflow gain), and a source ``Q`` adds ``Q dt sigma / kappa`` to each solve, with ``sigma`` the voxel's
diagonal share and ``kappa = (lambda + K) dt`` (``Q dt / d`` where ``kappa = 0``). With a sink array the step is
the mean of the forward and the reversed axis order.

Most problems are one-dimensional profiles carried along one axis of a 2-D or 3-D lattice with a small
transverse extent; the others (product modes, point release, random data) are genuinely multi-dimensional.
Every test runs on NumPy and, where a CUDA device is present, on CuPy (the ``xp`` fixture).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from conftest import to_host

from kernels.diffusion import (
    implicit_reactions,
    lod_diffuse,
    lod_factors,
    lod_scratch_size,
    reaction_share,
)

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
NDIMS = pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
# (ndim, axis carrying the profile): first, middle and last axis. The last axis is swept through a transposed
# copy in the kernel, so it is a separate code path.
AXES = pytest.mark.parametrize(
    ("ndim", "axis"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)], ids=["2d-ax0", "2d-ax1", "3d-ax0", "3d-ax1", "3d-ax2"]
)

D0 = 1000.0  # µm²/min
DX = 10.0  # µm
WIDTH = 4  # transverse extent of the line-like lattices


def eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def line_shape(n: int, ndim: int, axis: int, width: int = WIDTH) -> tuple:
    shape = [width] * ndim
    shape[axis] = n
    return tuple(shape)


def along(profile, shape, axis, xp, dtype):
    """A field of ``shape`` equal to the 1-D ``profile`` along ``axis`` and constant across it."""
    sh = [1] * len(shape)
    sh[axis] = len(profile)
    host = np.broadcast_to(np.asarray(profile, dtype=np.float64).reshape(sh), shape).astype(dtype)
    return xp.asarray(host)


def line_of(field, axis):
    """Host float64 profile along ``axis``; asserts the field is uniform across the other axes."""
    h = np.moveaxis(to_host(field).astype(np.float64), axis, 0).reshape(field.shape[axis], -1)
    scale = max(1.0, float(np.abs(h).max()))
    assert np.abs(h - h[:, :1]).max() <= 64 * eps(field.dtype) * scale, "profile is not uniform across the line"
    return h[:, 0]


def centres(n: int, dx: float) -> np.ndarray:
    return (np.arange(n) + 0.5) * dx


def no_flux(ndim: int) -> list:
    return [(None, None)] * ndim


def step(field, factors, nsteps, scratch=None, dt=None, decay=0.0):
    """``nsteps`` Lie-split steps: one LOD diffusion step, then (if ``decay``) the implicit decay step."""
    for _ in range(nsteps):
        lod_diffuse(field, factors, scratch)
        if decay:
            implicit_reactions(field, dt, decay_per_min=decay)
    return field


def observed_orders(errors) -> list:
    return [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]


def random_field(rng, shape, xp, dtype, low=0.0, high=1.0):
    return xp.asarray(rng.uniform(low, high, shape).astype(dtype))


def consistent_share(kappa: float, ndim: int) -> float:
    """Root ``s >= 0`` of ``1 + s - (1 + s) ** -(ndim - 1) = kappa``, by bisection in float64.

    Written as ``s - expm1(-(ndim - 1) log1p(s)) = kappa`` so that small ``kappa`` keeps full relative precision;
    the left-hand side increases with ``s``, is below ``kappa`` at ``s = 0`` and above it at ``s = kappa``.
    """
    if kappa == 0.0:
        return 0.0
    low, high = 0.0, float(kappa)
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid - math.expm1(-(ndim - 1) * math.log1p(mid)) < kappa:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def discrete_decay_profile(n: int, dx: float, diffusivity: float, decay: float, c_b: float) -> np.ndarray:
    """Exact steady state of the cell-centred 1-D problem ``decay c = D c''``, Dirichlet ``c_b`` at x = 0, no flux
    at x = n dx.

    The interior rows ``decay c_i = D (c_{i+1} - 2 c_i + c_{i-1}) / dx**2`` are solved by ``cosh(theta j)`` with
    ``cosh(theta) = 1 + decay dx**2 / (2 D)``; the no-flux face makes the profile even about ``j = 0`` at x = n dx,
    and the half-voxel Dirichlet face (ghost value ``2 c_b - c_0``) fixes the amplitude:
    ``c_i = c_b cosh(theta (n - 1/2 - i)) / (cosh(theta n) cosh(theta / 2))``. It tends to the continuous
    ``c_b cosh((X - x) / l) / cosh(X / l)`` with an O(dx**2) error (``~decay dx**2 / (8 D)`` near the face).
    """
    theta = math.acosh(1.0 + decay * dx**2 / (2.0 * diffusivity))
    j = n - 0.5 - np.arange(n)
    return c_b * np.cosh(theta * j) / (math.cosh(theta * n) * math.cosh(0.5 * theta))


def operator_steady_problem(ndim: int, axis: int, lam_dt: float, k_dt: float = 0.0) -> tuple:
    """Decay ``kappa_eff`` (per step) and boundary factor of the problem whose exact steady state is the LOD fixed
    point, for a profile along ``axis`` with uniform decay ``lam_dt`` in the factors and, if ``k_dt > 0``, a
    uniform sink array ``k_dt``.

    Each solve has the diagonal share ``sigma = s + k_dt / d`` (``s`` the consistent share of ``lam_dt``) and the
    inflow of ``axis`` is multiplied by ``g = (1 + s) ** m``, ``m`` the number of later solves. The other solves
    only divide a profile along ``axis`` by ``1 + sigma``, so with ``e = d - 1 - m`` earlier solves a fixed point
    ``c`` enters the solve of ``axis`` as ``c (1 + sigma) ** -e`` and must leave it as ``y = c (1 + sigma) ** m``:
    ``(1 + sigma - dt A) (1 + sigma) ** m c = (1 + sigma) ** -e c + g dt b``, i.e.

        ``(1 + sigma - (1 + sigma) ** -(d - 1)) c - dt A c = dt b ((1 + s) / (1 + sigma)) ** m``.

    That is the steady problem with decay ``kappa_eff / dt`` and boundary value ``c0 ((1 + s) / (1 + sigma)) ** m``.
    With a sink array the step averages the forward (``m = d - 1 - axis``) and the reversed (``m = axis``) axis
    order; both maps have the same linear part, so the fixed point has the mean of the two boundary factors.

    With decay alone (``sigma = s``) this is ``lam_dt`` and ``c0``: exact. A sink gets the plain share, and both
    come out smaller: ``kappa_eff = k_dt - (d - 1) k_dt**2 / (2 d) + ...`` and ``(1 + k_dt / d) ** -m``.
    """
    s = consistent_share(lam_dt, ndim)
    sigma = s + k_dt / ndim
    kappa_eff = 1.0 + sigma - (1.0 + sigma) ** (1 - ndim)
    later = [ndim - 1 - axis, axis] if k_dt > 0 else [ndim - 1 - axis]
    return kappa_eff, float(np.mean([((1.0 + s) / (1.0 + sigma)) ** m for m in later]))


# ---------------------------------------------------------------------------------------------------------------
# 1. Cosine mode between no-flux walls
# ---------------------------------------------------------------------------------------------------------------


def cosine_run(xp, ndim, axis, dtype, n, length, t_end, nsteps):
    """Evolve ``1 + cos(pi x / L)`` along ``axis``; return (numerical, analytic, fully discrete exact) profiles."""
    dx = length / n
    dt = t_end / nsteps
    x = centres(n, dx)
    shape = line_shape(n, ndim, axis)
    c = along(1.0 + np.cos(np.pi * x / length), shape, axis, xp, dtype)
    factors = lod_factors(shape, dx, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    scratch = xp.empty(lod_scratch_size(shape), dtype=dtype)
    step(c, factors, nsteps, scratch)
    analytic = 1.0 + np.cos(np.pi * x / length) * np.exp(-D0 * np.pi**2 * t_end / length**2)
    # The cosine is an exact eigenvector of the cell-centred no-flux Laplacian, eigenvalue -mu:
    mu = 4.0 * D0 / dx**2 * np.sin(np.pi * dx / (2.0 * length)) ** 2
    discrete = 1.0 + np.cos(np.pi * x / length) * (1.0 + dt * mu) ** (-nsteps)
    return line_of(c, axis), analytic, discrete


COS_LENGTH = 640.0  # µm
COS_TIME = 0.3 * COS_LENGTH**2 / (D0 * np.pi**2)  # the mode decays to exp(-0.3) ~ 0.74


@AXES
@DTYPES
def test_cosine_mode_no_flux(xp, ndim, axis, dtype):
    got, analytic, discrete = cosine_run(xp, ndim, axis, dtype, n=64, length=COS_LENGTH, t_end=COS_TIME, nsteps=100)
    # Analytic answer: time error ~3e-4 at 100 steps, space error ~2e-4 at 64 voxels.
    np.testing.assert_allclose(got, analytic, rtol=0, atol=1e-3)
    # The fully discrete solution is known in closed form: agreement to round-off.
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, discrete, rtol=0, atol=tol)


@NDIMS
@DTYPES
def test_product_cosine_mode_multidimensional(xp, ndim, dtype):
    """``1 + prod_a cos(pi x_a / L_a)`` on a full lattice: LOD factorises the mode exactly."""
    shape = (16, 12) if ndim == 2 else (12, 10, 8)
    lengths = [n * DX for n in shape]
    t_end, nsteps = 2.0, 80
    dt = t_end / nsteps
    grids = np.meshgrid(*[centres(n, DX) for n in shape], indexing="ij")
    mode = np.prod([np.cos(np.pi * g / ln) for g, ln in zip(grids, lengths)], axis=0)
    c = xp.asarray((1.0 + mode).astype(dtype))
    factors = lod_factors(shape, DX, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    step(c, factors, nsteps)
    got = to_host(c).astype(np.float64)

    rate = sum(np.pi**2 / ln**2 for ln in lengths)
    analytic = 1.0 + mode * np.exp(-D0 * rate * t_end)
    np.testing.assert_allclose(got, analytic, rtol=0, atol=5e-3)

    amp = np.prod([(1.0 + dt * 4.0 * D0 / DX**2 * np.sin(np.pi * DX / (2.0 * ln)) ** 2) ** (-nsteps) for ln in lengths])
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, 1.0 + mode * amp, rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------------------------
# 2. Steady decay profile from a Dirichlet face
# ---------------------------------------------------------------------------------------------------------------


DECAY_MODES = pytest.mark.parametrize("mode", ["split", "factors", "sink"])


def decay_steady(xp, ndim, dtype, n, length, decay, dt, nsteps, c0=1.0, mode="split", start=None):
    """Dirichlet ``c0`` at x = 0, no flux at x = X along axis 0, uniform decay; start from zero (or the profile
    ``start`` along axis 0).

    ``mode`` says where the decay goes: ``split``, a pointwise :func:`implicit_reactions` step after each
    diffusion step; ``factors``, ``lod_factors(decay_per_min=...)``; ``sink``, ``lod_diffuse(sink_per_min=...)``
    with a uniform array.
    """
    dx = length / n
    shape = line_shape(n, ndim, 0)
    bounds = [(c0, None)] + no_flux(ndim - 1)
    in_factors = decay if mode == "factors" else 0.0
    factors = lod_factors(shape, dx, dt, D0, bounds, dtype=dtype, xp=xp, decay_per_min=in_factors)
    c = xp.zeros(shape, dtype=dtype) if start is None else along(start, shape, 0, xp, dtype)
    if mode == "split":
        step(c, factors, nsteps, dt=dt, decay=decay)
    else:
        sink = xp.full(shape, decay, dtype=dtype) if mode == "sink" else None
        for _ in range(nsteps):
            lod_diffuse(c, factors, sink_per_min=sink)
    return line_of(c, 0), centres(n, dx)


def cosh_profile(x, length, c0, diffusivity, decay):
    ell = math.sqrt(diffusivity / decay)
    return c0 * np.cosh((length - x) / ell) / np.cosh(length / ell)


STEADY_X = 640.0  # µm
STEADY_DECAY = 0.1  # 1/min: decay length sqrt(D/lambda) = 100 µm


@NDIMS
@DTYPES
@pytest.mark.parametrize("lam_dt", [1.0, 0.25])
def test_steady_decay_profile_large_dt(xp, ndim, dtype, lam_dt):
    """Large implicit steps reach the steady state of the split scheme in a few dozen steps.

    Lie splitting moves the steady state: its fixed point solves ``lambda c = (1 + lambda dt) A c + b``, i.e. the
    continuous problem with decay ``lambda / (1 + lambda dt)`` and boundary value ``c0 / (1 + lambda dt)``.
    That modified cosh profile is matched to the O(dx^2) space error; the unmodified one is not (error ~lambda dt).
    """
    n = 64
    dt = lam_dt / STEADY_DECAY
    assert D0 * dt / (STEADY_X / n) ** 2 >= 25  # far beyond any explicit stability limit
    got, x = decay_steady(xp, ndim, dtype, n, STEADY_X, STEADY_DECAY, dt, nsteps=int(30 / lam_dt))
    shrink = 1.0 + STEADY_DECAY * dt
    expected = cosh_profile(x, STEADY_X, 1.0 / shrink, D0, STEADY_DECAY / shrink)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


@NDIMS
@DTYPES
@DECAY_MODES
def test_steady_decay_profile_converges_to_pde(xp, ndim, dtype, mode):
    """As ``lambda dt -> 0`` the steady state tends to ``c0 cosh((X-x)/l)/cosh(X/l)``, first order in dt.

    The decay in the factors has no time error in its steady state at all (see
    :func:`operator_steady_problem`): at every ``dt`` it is the exact discrete steady state, whose distance to the
    cosh is the O(dx^2) space error alone (1.2e-3 here, from the half-voxel Dirichlet face).
    """
    n = 64
    dx = STEADY_X / n
    expected = cosh_profile(centres(n, dx), STEADY_X, 1.0, D0, STEADY_DECAY)
    profiles = []
    for lam_dt in (0.04, 0.02):
        dt = lam_dt / STEADY_DECAY
        if mode == "split":
            got, _ = decay_steady(xp, ndim, dtype, n, STEADY_X, STEADY_DECAY, dt, int(12 / lam_dt), mode=mode)
        else:  # from the cosh, within 0.02 of the fixed point: after 80 min less than 1e-5 is left
            got, _ = decay_steady(
                xp, ndim, dtype, n, STEADY_X, STEADY_DECAY, dt, int(8 / lam_dt), mode=mode, start=expected
            )
        profiles.append(got)
    errors = [np.abs(p - expected).max() for p in profiles]
    if mode == "factors":
        discrete = discrete_decay_profile(n, dx, D0, STEADY_DECAY, 1.0)
        for got in profiles:
            np.testing.assert_allclose(got, discrete, rtol=0, atol=1e-5)
        assert max(errors) < 1.5e-3, errors
        assert abs(errors[0] - errors[1]) < 1e-5, errors
        return
    if mode == "sink":  # the fixed point of the plain share is known in closed form too
        for got, lam_dt in zip(profiles, (0.04, 0.02)):
            kappa_eff, gain = operator_steady_problem(ndim, 0, 0.0, lam_dt)
            expected_dt = discrete_decay_profile(n, dx, D0, kappa_eff * STEADY_DECAY / lam_dt, gain)
            np.testing.assert_allclose(got, expected_dt, rtol=0, atol=1e-5)
    assert errors[-1] < 0.022, errors  # ~lambda dt, plus ~5e-4 space error at dx = 10 µm, l = 100 µm
    assert 1.6 < errors[0] / errors[1] < 2.2, errors
    # Richardson extrapolation in dt removes the first-order splitting bias (<2e-3 left: O(dt^2) and space).
    assert np.abs(2.0 * profiles[1] - profiles[0] - expected).max() < 2.5e-3


@NDIMS
@DTYPES
@pytest.mark.parametrize("mode", ["factors", "sink"])
def test_steady_decay_profile_in_operator_at_large_dt(xp, ndim, dtype, mode):
    """With the decay inside the implicit operator, the quasi-steady profile at a large step is the documented one.

    Decay in the factors (consistent share and compensated Dirichlet inflow): the steady state of the step map is
    the steady state of the equation, ``c0 cosh((X-x)/l)/cosh(X/l)``, up to the O(dx^2) space error (1.2e-3 here),
    independently of dt. A uniform sink array takes the plain share ``K dt / d`` in every solve, an approximation
    at large ``K dt``: its fixed point is the exact steady state of the problem with the smaller decay and
    boundary value of :func:`operator_steady_problem` (first order in ``K dt``, see the test above).
    """
    n = 64
    dx = STEADY_X / n
    lam_dt = 6.0
    dt = lam_dt / STEADY_DECAY  # lambda dt = 6, D dt / dx^2 = 600
    got, x = decay_steady(xp, ndim, dtype, n, STEADY_X, STEADY_DECAY, dt, nsteps=40, mode=mode)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    if mode == "factors":
        np.testing.assert_allclose(got, discrete_decay_profile(n, dx, D0, STEADY_DECAY, 1.0), rtol=0, atol=tol)
        np.testing.assert_allclose(got, cosh_profile(x, STEADY_X, 1.0, D0, STEADY_DECAY), rtol=0, atol=1.5e-3)
        return
    kappa_eff, gain = operator_steady_problem(ndim, 0, 0.0, lam_dt)
    sigma = lam_dt / ndim
    assert math.isclose(kappa_eff, 1.0 + sigma - (1.0 + sigma) ** (1 - ndim))
    # The inflow is attenuated by the d - 1 later solves in the forward order, by none in the reversed one.
    assert math.isclose(gain, 0.5 * ((1.0 + sigma) ** (1 - ndim) + 1.0))
    np.testing.assert_allclose(got, discrete_decay_profile(n, dx, D0, kappa_eff / dt, gain), rtol=0, atol=tol)
    np.testing.assert_allclose(got, cosh_profile(x, STEADY_X, gain, D0, kappa_eff / dt), rtol=0, atol=1.5e-3)
    assert got.min() > 0.0
    assert got.max() < 1.0
    assert (np.diff(got) < 0).all()  # decreasing away from the Dirichlet face


def operator_steady(xp, ndim, axis, dtype, n, length, dt, lam_dt, k_dt, nsteps, start, c0=1.0):
    """Dirichlet ``c0`` at the low face of ``axis``, no flux elsewhere; decay ``lam_dt / dt`` in the factors and a
    uniform sink array ``k_dt / dt`` (none if zero). Run ``nsteps`` from the profile ``start`` along ``axis``."""
    dx = length / n
    shape = line_shape(n, ndim, axis)
    bounds = no_flux(ndim)
    bounds[axis] = (c0, None)
    factors = lod_factors(shape, dx, dt, D0, bounds, dtype=dtype, xp=xp, decay_per_min=lam_dt / dt)
    sink = xp.full(shape, k_dt / dt, dtype=dtype) if k_dt else None
    c = along(start, shape, axis, xp, dtype)
    for _ in range(nsteps):
        lod_diffuse(c, factors, sink_per_min=sink)
    return line_of(c, axis)


@AXES
@DTYPES
@pytest.mark.parametrize(
    ("lam_dt", "k_dt"),
    [(0.04, 0.0), (1.0, 0.0), (6.0, 0.0), (0.0, 6.0), (2.0, 4.0)],
    ids=["decay-0.04", "decay-1", "decay-6", "sink-6", "decay-2-sink-4"],
)
def test_steady_profile_in_operator_along_any_axis(xp, ndim, axis, dtype, lam_dt, k_dt):
    """The LOD fixed point of a profile along any axis (first, middle, last) is the closed form of
    :func:`operator_steady_problem`: with decay alone, the exact discrete steady state of the equation at any dt.

    Checked twice: the closed-form profile is a fixed point of the step map to round-off, and (for steps large
    enough to converge quickly) it is reached from zero.
    """
    n = 64
    dx = STEADY_X / n
    dt = (lam_dt + k_dt) / STEADY_DECAY
    kappa_eff, gain = operator_steady_problem(ndim, axis, lam_dt, k_dt)
    if k_dt == 0.0:
        assert math.isclose(kappa_eff, lam_dt, rel_tol=1e-12)
        assert gain == 1.0
    expected = discrete_decay_profile(n, dx, D0, kappa_eff / dt, gain)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    got = operator_steady(xp, ndim, axis, dtype, n, STEADY_X, dt, lam_dt, k_dt, 3, expected)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    if lam_dt + k_dt >= 1.0:  # the slowest mode shrinks at least 2x per step
        got = operator_steady(xp, ndim, axis, dtype, n, STEADY_X, dt, lam_dt, k_dt, 40, np.zeros(n))
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    if k_dt == 0.0:
        x = centres(n, dx)
        np.testing.assert_allclose(got, cosh_profile(x, STEADY_X, 1.0, D0, STEADY_DECAY), rtol=0, atol=1.5e-3)


# ---------------------------------------------------------------------------------------------------------------
# Uniform decay inside the factors: consistent share and Dirichlet inflow gain
# ---------------------------------------------------------------------------------------------------------------


KAPPAS = [0.0, 1e-9, 1e-4, 0.04, 1.0, 6.0, 100.0, 1e4]


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_reaction_share_solves_its_equation(xp, ndim):
    """``s`` solves ``1 + s - (1 + s) ** -(d - 1) = kappa`` (``s = kappa`` in 1-D) for scalars and arrays, and
    tends to the plain share ``kappa / d`` from above, ``s = kappa / d + (d - 1) kappa**2 / (2 d**2) + O(kappa**3)``."""
    expected = np.array([consistent_share(k, ndim) for k in KAPPAS])
    # s comes out of 1 + s: absolute round-off of a few ulps of 1 (it only ever enters the solves as 1 + s).
    scalars = np.array([float(reaction_share(k, ndim)) for k in KAPPAS])
    np.testing.assert_allclose(scalars, expected, rtol=1e-12, atol=4 * eps(np.float64))
    arrays = to_host(reaction_share(xp.asarray(KAPPAS), ndim, xp))
    np.testing.assert_allclose(arrays, expected, rtol=1e-12, atol=4 * eps(np.float64))
    u = 1.0 + expected
    np.testing.assert_allclose(u - u ** (1 - ndim), KAPPAS, rtol=1e-12, atol=1e-15)
    small = np.array(KAPPAS[1:4])
    plain = small / ndim
    np.testing.assert_allclose(expected[1:4], plain + (ndim - 1) * small**2 / (2 * ndim**2), rtol=small.max() ** 2)
    assert (expected >= 0).all() and (expected <= np.array(KAPPAS)).all()


@NDIMS
@pytest.mark.parametrize("lam_dt", [0.0, 0.3, 6.0])
def test_static_gain_counts_later_sweeps(xp, ndim, lam_dt):
    """Axis ``k`` of the factors compensates its Dirichlet inflow by ``(1 + s) ** (d - 1 - k)``."""
    dt = 2.0
    factors = lod_factors((6,) * ndim, DX, dt, D0, [(1.0, 0.5)] * ndim, xp=xp, decay_per_min=lam_dt / dt)
    s = consistent_share(lam_dt, ndim)
    assert factors.decay_per_min == lam_dt / dt
    for k, f in enumerate(factors.axes):
        assert f.axis == k
        assert f.later_sweeps == ndim - 1 - k
        assert math.isclose(f.static_gain, (1.0 + s) ** (ndim - 1 - k), rel_tol=1e-12)


@NDIMS
@DTYPES
@pytest.mark.parametrize("lam_dt", [0.01, 1.0, 6.0])
def test_decay_in_factors_divides_mass_by_consistent_share(xp, ndim, dtype, lam_dt):
    """No-flux faces: every axis solve conserves the sum and divides it by ``1 + s``, ``(1 + s) ** -d`` per step
    for any field (a uniform one stays uniform), with varying D too."""
    rng = np.random.default_rng(22)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    dt = 1.5
    per_step = (1.0 + consistent_share(lam_dt, ndim)) ** -ndim
    nsteps = 4
    for diffusivity in (D0, xp.asarray(D0 * rng.uniform(0.3, 2.0, shape))):
        factors = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=lam_dt / dt)
        uniform = xp.full(shape, 2.0, dtype=dtype)
        c = random_field(rng, shape, xp, dtype, 0.5, 1.5)
        mass0 = float(to_host(c).astype(np.float64).sum())
        for _ in range(nsteps):
            lod_diffuse(uniform, factors)
            lod_diffuse(c, factors)
        tol = 16 * nsteps * eps(dtype)
        np.testing.assert_allclose(to_host(uniform).astype(np.float64), 2.0 * per_step**nsteps, rtol=tol, atol=0)
        np.testing.assert_allclose(float(to_host(c).astype(np.float64).sum()), mass0 * per_step**nsteps, rtol=tol)


def cosine_decay_run(xp, ndim, axis, dtype, n, nsteps, decay, t_end=COS_TIME, length=COS_LENGTH):
    """``1 + cos(pi x / L)`` along ``axis`` with decay in the factors; (numerical, analytic, fully discrete)."""
    dx = length / n
    dt = t_end / nsteps
    x = centres(n, dx)
    shape = line_shape(n, ndim, axis)
    c = along(1.0 + np.cos(np.pi * x / length), shape, axis, xp, dtype)
    factors = lod_factors(shape, dx, dt, D0, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=decay)
    step(c, factors, nsteps)
    rate = D0 * np.pi**2 / length**2
    analytic = math.exp(-decay * t_end) * (1.0 + np.cos(np.pi * x / length) * math.exp(-rate * t_end))
    # Per step: the constant part is divided by 1 + s in every solve; the mode by 1 + s + dt mu along ``axis``.
    s = consistent_share(decay * dt, ndim)
    mu = 4.0 * D0 / dx**2 * np.sin(np.pi * dx / (2.0 * length)) ** 2
    mode = ((1.0 + s) ** (1 - ndim) / (1.0 + s + dt * mu)) ** nsteps
    discrete = (1.0 + s) ** (-ndim * nsteps) + np.cos(np.pi * x / length) * mode
    return line_of(c, axis), analytic, discrete


COS_DECAY = 0.05  # 1/min: decays the mean to exp(-0.62) over COS_TIME


@AXES
@DTYPES
def test_cosine_mode_with_decay_in_factors(xp, ndim, axis, dtype):
    got, analytic, discrete = cosine_decay_run(xp, ndim, axis, dtype, n=64, nsteps=100, decay=COS_DECAY)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, discrete, rtol=0, atol=tol)
    # First-order time error plus ~2e-4 space error: 5.7e-4 at 100 steps.
    np.testing.assert_allclose(got, analytic, rtol=0, atol=1e-3)


@NDIMS
@DTYPES
def test_decay_in_factors_first_order_in_time(xp, ndim, dtype):
    """The transient with the decay in the solves converges to the PDE at first order in dt."""
    errors = []
    for nsteps in (10, 20, 40):
        got, analytic, _ = cosine_decay_run(xp, ndim, ndim - 1, dtype, 64, nsteps, COS_DECAY)
        errors.append(np.abs(got - analytic).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 0.8 < order < 1.3, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 1.6e-3, errors  # float64 gives 1.4e-3


# ---------------------------------------------------------------------------------------------------------------
# 3. Mass conservation under no-flux walls
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
@pytest.mark.parametrize("kind", ["line", "block"])
def test_mass_conserved_no_flux(xp, ndim, dtype, varying, kind):
    rng = np.random.default_rng(11)
    if kind == "line":
        shape = line_shape(24, ndim, ndim - 1)
    else:
        shape = (16, 12) if ndim == 2 else (10, 8, 6)
    diffusivity = xp.asarray(D0 * rng.uniform(0.1, 2.0, shape)) if varying else D0
    dt = 0.5  # D dt / dx^2 = 5 (up to 10 with the varying D)
    factors = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp)
    c = random_field(rng, shape, xp, dtype)
    mass0 = float(to_host(c).astype(np.float64).sum())
    step(c, factors, 20)
    mass = float(to_host(c).astype(np.float64).sum())
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(mass - mass0) <= rtol * mass0
    assert float(to_host(c).min()) >= 0.0


# ---------------------------------------------------------------------------------------------------------------
# 4. Convergence orders by refinement
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
def test_first_order_in_time(xp, ndim, dtype):
    axis = ndim - 1
    errors = []
    for nsteps in (10, 20, 40):  # fixed fine lattice (64 voxels), dt halved
        got, analytic, _ = cosine_run(xp, ndim, axis, dtype, 64, COS_LENGTH, COS_TIME, nsteps)
        errors.append(np.abs(got - analytic).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 0.8 < order < 1.3, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 1.1e-3, errors  # float64 gives 8.7e-4


@NDIMS
@DTYPES
def test_second_order_in_space(xp, ndim, dtype):
    errors = []
    for n, nsteps in ((8, 4), (16, 16), (32, 64)):  # dx halved, dt scaled with dx^2
        got, analytic, _ = cosine_run(xp, ndim, 0, dtype, n, COS_LENGTH, COS_TIME, nsteps)
        errors.append(np.abs(got - analytic).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 1.7 < order < 2.4, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 9e-4, errors  # float64 gives 7.0e-4


@NDIMS
@DTYPES
def test_second_order_in_space_dirichlet(xp, ndim, dtype):
    """The half-voxel Dirichlet face keeps second order: steady decay profile under lattice refinement."""
    dt = 5.0
    shrink = 1.0 + STEADY_DECAY * dt
    errors = []
    for n in (16, 32, 64):
        got, x = decay_steady(xp, ndim, dtype, n, STEADY_X, STEADY_DECAY, dt, nsteps=60)
        expected = cosh_profile(x, STEADY_X, 1.0 / shrink, D0, STEADY_DECAY / shrink)
        errors.append(np.abs(got - expected).max())
    if dtype == np.float64:
        for order in observed_orders(errors):
            assert 1.7 < order < 2.4, (errors, observed_orders(errors))
    else:
        assert errors[-1] < 7e-4, errors  # float64 gives 5.3e-4


# ---------------------------------------------------------------------------------------------------------------
# 5. Unconditional stability at huge D dt / dx^2
# ---------------------------------------------------------------------------------------------------------------


STABILITY_SHAPES = {2: [(24, 4), (16, 12)], 3: [(16, 4, 4), (8, 7, 6)]}


@NDIMS
@DTYPES
@pytest.mark.parametrize("ratio", [1e4, 1e5], ids=["r1e4", "r1e5"])
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
def test_stable_at_huge_ratio_no_flux(xp, ndim, dtype, ratio, varying):
    rng = np.random.default_rng(5)
    dt = ratio * DX**2 / D0
    nsteps = 50
    for shape in STABILITY_SHAPES[ndim]:
        diffusivity = xp.asarray(D0 * rng.uniform(0.2, 2.0, shape)) if varying else D0
        factors = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp)
        c0 = random_field(rng, shape, xp, dtype)
        host0 = to_host(c0).astype(np.float64)
        c = step(c0.copy(), factors, nsteps)
        got = to_host(c).astype(np.float64)
        assert np.isfinite(got).all()
        slack = 16 * eps(dtype)
        assert got.min() >= host0.min() - slack  # maximum principle
        assert got.max() <= host0.max() + slack
        # Round-off drift: a few ulps per step in float32; in float64 it is set by the conditioning (~ratio) of
        # the near-constant mode of I - dt A.
        rtol = 1e-4 if dtype == np.float32 else nsteps * ratio * eps(np.float64)
        assert abs(got.sum() - host0.sum()) <= rtol * host0.sum()


@NDIMS
@DTYPES
@pytest.mark.parametrize("ratio", [1e4, 1e5], ids=["r1e4", "r1e5"])
@pytest.mark.parametrize("varying", [False, True], ids=["uniform-D", "varying-D"])
def test_stable_at_huge_ratio_dirichlet_relaxes(xp, ndim, dtype, ratio, varying):
    rng = np.random.default_rng(6)
    dt = ratio * DX**2 / D0
    value = 0.7
    for shape in STABILITY_SHAPES[ndim]:
        diffusivity = xp.asarray(D0 * rng.uniform(0.2, 2.0, shape)) if varying else D0
        factors = lod_factors(shape, DX, dt, diffusivity, [(value, value)] * ndim, dtype=dtype, xp=xp)
        c = random_field(rng, shape, xp, dtype)
        step(c, factors, 20)
        got = to_host(c).astype(np.float64)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, value, rtol=0, atol=64 * eps(dtype))


# ---------------------------------------------------------------------------------------------------------------
# 6. Spatially varying D
# ---------------------------------------------------------------------------------------------------------------


@AXES
@DTYPES
def test_two_region_steady_flux_continuous(xp, ndim, axis, dtype):
    """High D left, low D right, Dirichlet faces: exact piecewise-linear profile with one flux on every face."""
    n, m = 20, 8  # interface on the face between voxels m-1 and m
    d_left, d_right = 2000.0, 200.0
    c_left, c_right = 1.0, 0.2
    length = n * DX
    d_line = np.where(np.arange(n) < m, d_left, d_right)
    shape = line_shape(n, ndim, axis)
    diffusivity = along(d_line, shape, axis, xp, np.float64)
    bounds = no_flux(ndim)
    bounds[axis] = (c_left, c_right)
    dt = 10.0  # D dt / dx^2 = 20 to 200: the slowest mode shrinks ~1.8x per step
    factors = lod_factors(shape, DX, dt, diffusivity, bounds, dtype=dtype, xp=xp)
    c = xp.zeros(shape, dtype=dtype)
    step(c, factors, 80)
    got = line_of(c, axis)
    # Round-off of the solves: a few ulps, plus ~ratio * eps from the float64 factorisation (ratio = D dt / dx^2).
    tol = 8 * eps(dtype) + (d_left * dt / DX**2) * eps(np.float64)
    np.testing.assert_allclose(line_of(step(c.copy(), factors, 1), axis), got, rtol=0, atol=tol)  # steady

    # Series resistances: the discrete face conductances reproduce them exactly, so the profile is exact.
    flux = (c_left - c_right) / (m * DX / d_left + (length - m * DX) / d_right)
    x = centres(n, DX)
    expected = np.where(x < m * DX, c_left - flux * x / d_left, c_right + flux * (length - x) / d_right)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)

    # Numerical flux -D_face (c_{i+1} - c_i) / dx on every face, boundary half-faces included.
    d_face = 2.0 * d_line[:-1] * d_line[1:] / (d_line[:-1] + d_line[1:])
    fluxes = np.concatenate(
        [
            [-2.0 * d_line[0] * (got[0] - c_left) / DX],
            -d_face * np.diff(got) / DX,
            [-2.0 * d_line[-1] * (c_right - got[-1]) / DX],
        ]
    )
    np.testing.assert_allclose(fluxes, flux, rtol=2.0 * d_left * tol / (DX * flux))  # tol propagated to fluxes


@NDIMS
@DTYPES
@pytest.mark.parametrize("kind", ["line", "block"])
def test_constant_array_matches_scalar_diffusivity(xp, ndim, dtype, kind):
    rng = np.random.default_rng(7)
    shape = line_shape(20, ndim, ndim - 1) if kind == "line" else ((12, 10) if ndim == 2 else (8, 7, 6))
    bounds = [(1.0, None)] + [(None, 0.3)] + no_flux(ndim - 2)
    dt = 0.7
    c0 = random_field(rng, shape, xp, dtype)
    scalar = lod_factors(shape, DX, dt, D0, bounds, dtype=dtype, xp=xp)
    array = lod_factors(shape, DX, dt, xp.full(shape, D0), bounds, dtype=dtype, xp=xp)
    a = step(c0.copy(), scalar, 10, dt=dt, decay=0.05)
    b = step(c0.copy(), array, 10, dt=dt, decay=0.05)
    np.testing.assert_allclose(to_host(b), to_host(a), rtol=0, atol=32 * eps(dtype))


# ---------------------------------------------------------------------------------------------------------------
# 7. Implicit per-voxel reactions
# ---------------------------------------------------------------------------------------------------------------


REACTION_TERMS = ["decay", "uptake", "supply-array", "supply-scalar", "source", "all"]


@NDIMS
@DTYPES
@pytest.mark.parametrize("terms", REACTION_TERMS)
def test_implicit_reactions_closed_form(xp, ndim, dtype, terms):
    rng = np.random.default_rng(8)
    shape = (9, 7) if ndim == 2 else (6, 5, 4)
    dt = 0.8

    def arr(low, high):
        return rng.uniform(low, high, shape).astype(dtype)

    c = arr(0.0, 2.0)
    lam = 0.3 if terms in ("decay", "all") else 0.0
    uptake = arr(0.0, 1.5) if terms in ("uptake", "all") else None
    supply = arr(0.0, 2.0) if terms in ("supply-array", "supply-scalar", "all") else None
    target = None
    if supply is not None:
        target = 1.7 if terms == "supply-scalar" else arr(0.5, 3.0)
    source = None
    if terms in ("source", "all"):
        source = arr(-1.0, 1.0) if terms == "source" else arr(-6.0, 1.0)  # strong sinks hit the clip at zero

    num = c.astype(np.float64)
    den = 1.0 + dt * lam
    if uptake is not None:
        den = den + dt * uptake
    if supply is not None:
        num = num + dt * supply * np.asarray(target, dtype=np.float64)
        den = den + dt * supply
    if source is not None:
        num = num + dt * source
    expected = np.maximum(num / den, 0.0)

    def dev(a):
        return None if a is None else xp.asarray(a)

    field = xp.asarray(c)
    target_dev = target if np.isscalar(target) or target is None else xp.asarray(target)
    out = implicit_reactions(
        field,
        dt,
        decay_per_min=lam,
        uptake_per_min=dev(uptake),
        supply_per_min=dev(supply),
        supply_target=target_dev,
        source=dev(source),
    )
    assert out is field
    assert field.dtype == dtype
    got = to_host(field).astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=8 * eps(dtype), atol=8 * eps(dtype))
    assert got.min() >= 0.0
    if terms in ("source", "all"):
        assert (got == 0.0).any()  # the clip was exercised


@NDIMS
@DTYPES
def test_implicit_reactions_never_negative(xp, ndim, dtype):
    rng = np.random.default_rng(9)
    shape = (8, 6) if ndim == 2 else (5, 4, 3)
    field = random_field(rng, shape, xp, dtype, 0.0, 1e-3)
    sink = xp.asarray(rng.uniform(-5.0, -1.0, shape).astype(dtype))
    uptake = xp.asarray(rng.uniform(0.0, 100.0, shape).astype(dtype))
    for dt in (1e-3, 1.0, 1e3):
        implicit_reactions(field, dt, decay_per_min=10.0, uptake_per_min=uptake, source=sink)
        assert float(to_host(field).min()) >= 0.0
    assert float(to_host(field).max()) == 0.0


@NDIMS
@DTYPES
def test_implicit_decay_first_order_to_exponential(xp, ndim, dtype):
    shape = (5, 4) if ndim == 2 else (4, 3, 3)
    lam, t_end, c0 = 0.5, 2.0, 3.0
    exact = c0 * math.exp(-lam * t_end)
    errors = []
    for nsteps in (50, 100, 200):
        field = xp.full(shape, c0, dtype=dtype)
        for _ in range(nsteps):
            implicit_reactions(field, t_end / nsteps, decay_per_min=lam)
        got = to_host(field).astype(np.float64)
        np.testing.assert_allclose(got, c0 * (1.0 + lam * t_end / nsteps) ** (-nsteps), rtol=nsteps * 4 * eps(dtype))
        errors.append(np.abs(got - exact).max())
    assert errors[-1] < 5e-3 * exact  # first-order error ~ lambda^2 t dt / 2
    for order in observed_orders(errors):
        assert 0.9 < order < 1.1, errors


# ---------------------------------------------------------------------------------------------------------------
# Sinks and sources inside the implicit operator
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize("k_dt", [0.1, 10.0, 60.0])
def test_uniform_sink_and_source_reach_equilibrium(xp, ndim, dtype, k_dt):
    """No-flux box, uniform sink K and source Q: every voxel relaxes to Q / K, at any K dt."""
    rng = np.random.default_rng(12)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    sink_rate, source_rate = 0.5, 2.0
    dt = k_dt / sink_rate
    factors = lod_factors(shape, DX, dt, D0, no_flux(ndim), dtype=dtype, xp=xp)
    c = random_field(rng, shape, xp, dtype, 0.0, 10.0)
    sink = xp.full(shape, sink_rate, dtype=dtype)
    source = xp.full(shape, source_rate, dtype=dtype)
    for _ in range(int(40 / min(k_dt, 1.0))):
        lod_diffuse(c, factors, sink_per_min=sink, source=source)
    np.testing.assert_allclose(to_host(c).astype(np.float64), source_rate / sink_rate, rtol=64 * eps(dtype))


def sink_vs_decay_difference(xp, shape, dtype, bounds, k_dt, dt=0.7, nsteps=5):
    """Largest difference after ``nsteps`` between a uniform sink array ``K`` and the same ``K`` as decay in the
    factors (with a zero sink array, so that both runs average the same two axis orders)."""
    rng = np.random.default_rng(13)
    diffusivity = xp.asarray(D0 * rng.uniform(0.5, 1.5, shape))
    c0 = random_field(rng, shape, xp, dtype)
    rate = k_dt / dt
    with_decay = lod_factors(shape, DX, dt, diffusivity, bounds, dtype=dtype, xp=xp, decay_per_min=rate)
    without = lod_factors(shape, DX, dt, diffusivity, bounds, dtype=dtype, xp=xp)
    a = c0.copy()
    b = c0.copy()
    zero = xp.zeros(shape, dtype=dtype)
    sink = xp.full(shape, rate, dtype=dtype)
    for _ in range(nsteps):
        lod_diffuse(a, with_decay, sink_per_min=zero)
        lod_diffuse(b, without, sink_per_min=sink)
    return float(np.abs(to_host(a).astype(np.float64) - to_host(b)).max())


@NDIMS
@DTYPES
@pytest.mark.parametrize("kind", ["line", "block"])
def test_uniform_sink_array_matches_decay_in_factors_at_small_k_dt(xp, ndim, dtype, kind):
    """A uniform sink array and the same rate as decay in the factors agree to first order in ``K dt``.

    They differ by the share (plain ``K dt / d`` against the consistent ``s = K dt / d + O((K dt)**2)``) and by
    the Dirichlet inflow gain ``(1 + s) ** later = 1 + O(K dt)`` that only the decay gets. With Dirichlet faces the
    difference is therefore first order in ``K dt``, under no-flux faces second order.
    """
    shape = line_shape(20, ndim, ndim - 1) if kind == "line" else ((12, 10) if ndim == 2 else (8, 7, 6))
    dirichlet = [(1.0, None)] + [(None, 0.3)] + no_flux(ndim - 2)
    first = [sink_vs_decay_difference(xp, shape, dtype, dirichlet, k_dt) for k_dt in (1e-3, 5e-4)]
    second = [sink_vs_decay_difference(xp, shape, dtype, no_flux(ndim), k_dt) for k_dt in (2e-2, 1e-2)]
    assert first[0] < 1e-3, first  # |difference| <~ K dt: the same scheme in the limit
    assert second[0] < 1e-3, second  # ~5 steps x (d - 1) (K dt)**2 / (2 d)
    assert 1.8 < first[0] / first[1] < 2.2, first
    assert 3.4 < second[0] / second[1] < 4.4, second  # 3.8: third-order terms still show at K dt = 0.02


@NDIMS
@DTYPES
@pytest.mark.parametrize("lam_dt", [0.0, 2.0], ids=["sink", "decay+sink"])
@pytest.mark.parametrize("k_dt", [6.0, 60.0])
def test_uniform_sink_array_takes_plain_share_at_large_k_dt(xp, ndim, dtype, lam_dt, k_dt):
    """Under no-flux faces a uniform sink array divides the mass by ``(1 + s + K dt / d) ** d`` per step.

    ``s`` is the consistent share of the decay in the factors; the sink takes the plain share on top of it. At
    large ``K dt`` that is far from the same rate as decay in the factors, ``(1 + s(K dt)) ** -d`` per step.
    """
    rng = np.random.default_rng(16)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    dt = 2.0
    diffusivity = xp.asarray(D0 * rng.uniform(0.5, 1.5, shape))
    factors = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=lam_dt / dt)
    sink = xp.full(shape, k_dt / dt, dtype=dtype)
    c = random_field(rng, shape, xp, dtype, 0.5, 1.5)
    mass0 = float(to_host(c).astype(np.float64).sum())
    per_step = (1.0 + consistent_share(lam_dt, ndim) + k_dt / ndim) ** -ndim
    nsteps = 3
    for _ in range(nsteps):
        lod_diffuse(c, factors, sink_per_min=sink)
    mass = float(to_host(c).astype(np.float64).sum())
    np.testing.assert_allclose(mass, mass0 * per_step**nsteps, rtol=64 * eps(dtype))

    rate = (lam_dt + k_dt) / dt
    decay = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=rate)
    c = random_field(rng, shape, xp, dtype, 0.5, 1.5)
    mass0 = float(to_host(c).astype(np.float64).sum())
    lod_diffuse(c, decay)
    consistent = (1.0 + consistent_share(lam_dt + k_dt, ndim)) ** -ndim
    np.testing.assert_allclose(float(to_host(c).astype(np.float64).sum()), mass0 * consistent, rtol=64 * eps(dtype))
    assert per_step > 2.0 * consistent  # the plain share decays far less per step


def one_axis_step(c, sink, source, *, ndim, axis, dt, r, lam=0.0, c_low=None, c_high=None, orders=None):
    """Reference LOD step (float64) for a field, sink and source that vary along ``axis`` only.

    Every solve has the diagonal share ``sigma = s + K dt / d`` (``s`` the consistent share of ``lam dt``) and the
    source share ``Q dt sigma / kappa``, ``kappa = (lam + K) dt`` (``Q dt / d`` where ``kappa = 0``). The solve
    along ``axis`` is the tridiagonal system, with the Dirichlet inflow times ``(1 + s) ** later``; every other
    solve is ``c <- (c + source share) / (1 + sigma)`` voxel by voxel. ``orders`` lists the number of solves
    before ``axis`` in each axis order that is averaged (default: forward and reversed).
    """
    n = len(c)
    s = consistent_share(lam * dt, ndim)
    sigma = s + sink * dt / ndim
    kappa = (lam + sink) * dt
    src = source * dt * np.where(kappa > 0, sigma / np.where(kappa > 0, kappa, 1.0), 1.0 / ndim)
    matrix = np.diag(1.0 + 2.0 * r + sigma) - r * (np.eye(n, k=1) + np.eye(n, k=-1))
    matrix[0, 0] += r if c_low is not None else -r  # Dirichlet half-face: conductance 2 D; no-flux: none
    matrix[-1, -1] += r if c_high is not None else -r
    results = []
    for before in orders if orders is not None else (axis, ndim - 1 - axis):
        y = c
        for k in range(ndim):
            if k == before:
                rhs = y + src
                gain = (1.0 + s) ** (ndim - 1 - k)
                if c_low is not None:
                    rhs[0] += 2.0 * r * c_low * gain
                if c_high is not None:
                    rhs[-1] += 2.0 * r * c_high * gain
                y = np.linalg.solve(matrix, rhs)
            else:
                y = (y + src) / (1.0 + sigma)
        results.append(y)
    return np.mean(results, axis=0)


@AXES
@DTYPES
def test_varying_sink_and_source_reduce_to_one_dimensional_solve(xp, ndim, axis, dtype):
    """Sink, source and field varying along one axis only: each axis order is one 1-D implicit solve.

    The solve along ``axis`` is ``(I - dt A + dt K / d) y = c + dt Q / d`` (plus the Dirichlet term) and every
    other axis solve reduces to ``c <- (c + dt Q / d) / (1 + dt K / d)`` voxel by voxel, in sweep order. With a
    sink the step is the mean of the forward and the reversed axis order.
    """
    rng = np.random.default_rng(15)
    n, dt, c_low = 24, 0.5, 0.8
    sink = rng.uniform(0.0, 3.0, n) * (rng.uniform(size=n) < 0.6)
    source = rng.uniform(0.0, 2.0, n)
    c = rng.uniform(0.0, 1.0, n)
    shape = line_shape(n, ndim, axis)
    bounds = no_flux(ndim)
    bounds[axis] = (c_low, None)
    factors = lod_factors(shape, DX, dt, D0, bounds, dtype=dtype, xp=xp)
    field = along(c, shape, axis, xp, dtype)
    lod_diffuse(
        field, factors, sink_per_min=along(sink, shape, axis, xp, dtype), source=along(source, shape, axis, xp, dtype)
    )
    # Cast the inputs as the kernel sees them.
    sink, source, c = (v.astype(dtype).astype(np.float64) for v in (sink, source, c))
    expected = one_axis_step(c, sink, source, ndim=ndim, axis=axis, dt=dt, r=D0 * dt / DX**2, c_low=c_low)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(line_of(field, axis), expected, rtol=tol, atol=tol)


@AXES
@DTYPES
@pytest.mark.parametrize("dt", [0.5, 10.0])
@pytest.mark.parametrize("with_sink", [False, True], ids=["no-sink", "sink"])
def test_decay_sink_and_source_reduce_to_one_dimensional_solve(xp, ndim, axis, dtype, dt, with_sink):
    """Decay in the factors, a sink with zeros and a source, Dirichlet faces at both ends of ``axis``.

    Checks the whole documented step: consistent decay share plus plain sink share on the diagonal, Dirichlet
    inflow times ``(1 + s) ** later`` (per axis order), source share ``Q dt sigma / kappa`` (``Q dt s / (lam dt)``
    without a sink), one axis order without a sink and the mean of both orders with one. ``lam dt`` = 0.3 and 6.
    """
    rng = np.random.default_rng(17)
    n, lam, c_low, c_high = 24, 0.6, 0.8, 0.3
    sink = rng.uniform(0.0, 3.0, n) * (rng.uniform(size=n) < 0.6) if with_sink else np.zeros(n)
    source = rng.uniform(0.0, 2.0, n)
    c = rng.uniform(0.0, 1.0, n)
    shape = line_shape(n, ndim, axis)
    bounds = no_flux(ndim)
    bounds[axis] = (c_low, c_high)
    factors = lod_factors(shape, DX, dt, D0, bounds, dtype=dtype, xp=xp, decay_per_min=lam)
    field = along(c, shape, axis, xp, dtype)
    sink_dev = along(sink, shape, axis, xp, dtype) if with_sink else None
    lod_diffuse(field, factors, sink_per_min=sink_dev, source=along(source, shape, axis, xp, dtype))
    sink, source, c = (v.astype(dtype).astype(np.float64) for v in (sink, source, c))
    orders = None if with_sink else (axis,)
    r = D0 * dt / DX**2
    faces = {"c_low": c_low, "c_high": c_high}
    expected = one_axis_step(c, sink, source, ndim=ndim, axis=axis, dt=dt, r=r, lam=lam, orders=orders, **faces)
    tol = 4e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(line_of(field, axis), expected, rtol=tol, atol=tol)


@NDIMS
@DTYPES
@pytest.mark.parametrize("dt", [0.2, 30.0])
@pytest.mark.parametrize("terms", ["decay", "decay+sink", "sink"])
def test_source_without_diffusion_reaches_reaction_fixed_point(xp, ndim, dtype, dt, terms):
    """``D = 0``: every voxel relaxes to ``Q / (lambda + K)`` exactly, and a voxel with ``lambda + K = 0`` gains
    ``Q dt`` per step.

    Each solve is ``c <- (c + Q dt sigma / kappa) / (1 + sigma)``, whose fixed point is ``Q dt / kappa``: after
    ``n`` steps ``c = Q / (lambda + K) + (c0 - Q / (lambda + K)) (1 + sigma) ** -(d n)``.
    """
    rng = np.random.default_rng(18)
    shape = (7, 6) if ndim == 2 else (6, 5, 4)
    lam = 0.0 if terms == "sink" else 0.3
    sink = rng.uniform(0.0, 3.0, shape) * (rng.uniform(size=shape) < 0.7) if "sink" in terms else np.zeros(shape)
    source = rng.uniform(0.0, 2.0, shape)
    c0 = rng.uniform(0.0, 1.0, shape)
    factors = lod_factors(shape, DX, dt, 0.0, [(1.0, 0.5)] * ndim, dtype=dtype, xp=xp, decay_per_min=lam)
    sink_dev = xp.asarray(sink.astype(dtype)) if "sink" in terms else None
    source_dev = xp.asarray(source.astype(dtype))
    sink, source, c0 = (v.astype(dtype).astype(np.float64) for v in (sink, source, c0))
    sigma = consistent_share(lam * dt, ndim) + sink * dt / ndim
    rate = lam + sink
    reacting = rate > 0
    fixed = np.where(reacting, source / np.where(reacting, rate, 1.0), 0.0)
    if terms == "sink":
        assert (~reacting).any()  # some voxels have neither decay nor sink
    tol = 16 * eps(dtype)

    field = xp.asarray(c0.astype(dtype))
    nsteps = 3
    for _ in range(nsteps):
        lod_diffuse(field, factors, sink_per_min=sink_dev, source=source_dev)
    expected = np.where(reacting, fixed + (c0 - fixed) * (1.0 + sigma) ** (-ndim * nsteps), c0 + nsteps * dt * source)
    scale = 1.0 + fixed + nsteps * dt * source  # the values the kernel rounds on the way (Q / K is large at small K)
    np.testing.assert_array_less(np.abs(to_host(field).astype(np.float64) - expected) / scale, tol)

    field = xp.asarray(np.where(reacting, fixed, c0).astype(dtype))  # start at the fixed point: it stays there
    for _ in range(nsteps):
        lod_diffuse(field, factors, sink_per_min=sink_dev, source=source_dev)
    got = to_host(field).astype(np.float64)
    np.testing.assert_allclose(got[reacting], fixed[reacting], rtol=tol, atol=tol)


@NDIMS
@DTYPES
@pytest.mark.parametrize("dt", [0.5, 20.0])
@pytest.mark.parametrize(
    ("lam", "sink_rate"),
    [(0.0, None), (0.0, 0.0), (0.4, None), (0.4, 1.5)],
    ids=["Q", "Q-zero-sink", "decay", "decay+sink"],
)
def test_source_mass_balance_no_flux(xp, ndim, dtype, dt, lam, sink_rate):
    """No-flux faces, spatially varying D and Q, uniform reactions: the sum obeys the per-solve recurrence
    ``M <- (M + sum(Q) dt sigma / kappa) / (1 + sigma)``; without reactions a source adds exactly ``sum(Q) dt``
    per step."""
    rng = np.random.default_rng(19)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    diffusivity = xp.asarray(D0 * rng.uniform(0.5, 1.5, shape))
    factors = lod_factors(shape, DX, dt, diffusivity, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=lam)
    source = rng.uniform(0.0, 2.0, shape).astype(dtype)
    sink = None if sink_rate is None else xp.full(shape, sink_rate, dtype=dtype)
    c = random_field(rng, shape, xp, dtype)
    mass = float(to_host(c).astype(np.float64).sum())
    inflow = float(source.astype(np.float64).sum()) * dt
    rate = lam + (sink_rate or 0.0)
    sigma = consistent_share(lam * dt, ndim) + (sink_rate or 0.0) * dt / ndim
    source = xp.asarray(source)
    nsteps = 4
    for _ in range(nsteps):
        lod_diffuse(c, factors, sink_per_min=sink, source=source)
        for _ in range(ndim):
            mass = (mass + inflow * sigma / (rate * dt)) / (1.0 + sigma) if rate > 0 else mass + inflow / ndim
    got = to_host(c).astype(np.float64)
    np.testing.assert_allclose(got.sum(), mass, rtol=64 * eps(dtype))
    if rate == 0:
        assert got.min() >= 0.0


@NDIMS
@DTYPES
def test_sink_averages_forward_and_reversed_axis_order(xp, ndim, dtype):
    """With a sink array (here zero) the step is the mean of the forward and the reversed axis order; without
    one it is the forward order alone. Varying D, decay and Dirichlet faces make the two orders differ."""
    rng = np.random.default_rng(20)
    shape = (12, 10) if ndim == 2 else (8, 7, 6)
    diffusivity = xp.asarray(D0 * rng.uniform(0.3, 2.0, shape))
    bounds = [(1.0, None)] + [(None, 0.3)] + no_flux(ndim - 2)
    factors = lod_factors(shape, DX, 2.0, diffusivity, bounds, dtype=dtype, xp=xp, decay_per_min=0.5)
    reversed_order = dataclasses.replace(factors, axes=factors.axes[::-1])
    c0 = random_field(rng, shape, xp, dtype)
    forward = to_host(lod_diffuse(c0.copy(), factors)).astype(np.float64)
    backward = to_host(lod_diffuse(c0.copy(), reversed_order)).astype(np.float64)
    both = to_host(lod_diffuse(c0.copy(), factors, sink_per_min=xp.zeros(shape, dtype=dtype))).astype(np.float64)
    assert np.abs(forward - backward).max() > 1e-3
    tol = 8 * eps(dtype)
    np.testing.assert_allclose(both, 0.5 * (forward + backward), rtol=tol, atol=tol)


@NDIMS
@DTYPES
def test_symmetric_sink_gives_symmetric_field(xp, ndim, dtype):
    """A problem symmetric under reversing the axes (``c = c.T`` in 2-D) stays symmetric with a sink array: the
    averaged axis orders remove the bias toward the axis solved last."""
    rng = np.random.default_rng(21)
    shape = (12, 12) if ndim == 2 else (8, 7, 8)

    def symmetric(a):
        return 0.5 * (a + a.T)

    sink = symmetric(rng.uniform(0.0, 20.0, shape) * (rng.uniform(size=shape) < 0.3)).astype(dtype)
    c = xp.asarray(symmetric(rng.uniform(0.0, 1.0, shape)).astype(dtype))
    diffusivity = xp.asarray(symmetric(D0 * rng.uniform(0.5, 1.5, shape)))
    factors = lod_factors(shape, DX, 5.0, diffusivity, [(1.0, 0.5)] * ndim, dtype=dtype, xp=xp, decay_per_min=0.1)
    for _ in range(5):
        lod_diffuse(c, factors, sink_per_min=xp.asarray(sink))
    got = to_host(c).astype(np.float64)
    np.testing.assert_allclose(got, got.T, rtol=0, atol=8 * eps(dtype))
    assert got.std() > 0.05  # a non-trivial field


@NDIMS
@DTYPES
def test_sink_keeps_field_within_bounds(xp, ndim, dtype):
    """Huge per-voxel sinks (K dt up to 1e3) next to Dirichlet faces: no negative values, no overshoot."""
    rng = np.random.default_rng(14)
    shape = (16, 12) if ndim == 2 else (10, 8, 6)
    dt = 10.0
    factors = lod_factors(shape, DX, dt, D0, [(1.0, 0.5)] * ndim, dtype=dtype, xp=xp)
    sink = xp.asarray((rng.uniform(0.0, 100.0, shape) * (rng.uniform(size=shape) < 0.3)).astype(dtype))
    c = random_field(rng, shape, xp, dtype)
    for _ in range(10):
        lod_diffuse(c, factors, sink_per_min=sink)
        got = to_host(c).astype(np.float64)
        assert np.isfinite(got).all()
        assert got.min() >= 0.0
        assert got.max() <= 1.0 + 16 * eps(dtype)


# ---------------------------------------------------------------------------------------------------------------
# 8. Point release
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
@pytest.mark.parametrize(("decay", "mode"), [(0.0, "split"), (0.2, "split"), (0.2, "factors")])
def test_point_release_spread_and_mass(xp, ndim, dtype, decay, mode):
    """Mean squared displacement of a released delta is 2 d D t; with decay the mass is M0 exp(-lambda t)."""
    shape = (41, 41) if ndim == 2 else (21, 21, 21)
    sigma = 3.0 * DX if ndim == 2 else 2.0 * DX  # per-axis spread; the walls are 5 sigma or more away
    t_end = sigma**2 / (2.0 * D0)
    nsteps = 20
    dt = t_end / nsteps
    in_factors = decay if mode == "factors" else 0.0
    factors = lod_factors(shape, DX, dt, D0, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=in_factors)
    centre = tuple(n // 2 for n in shape)
    host = np.zeros(shape, dtype=dtype)
    host[centre] = 1.0
    c = xp.asarray(host)
    step(c, factors, nsteps, dt=dt, decay=decay if mode == "split" else 0.0)
    got = to_host(c).astype(np.float64)

    grids = np.meshgrid(*[(np.arange(n) - n // 2) * DX for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    msd = float((got * r2).sum() / got.sum())
    # Each backward-Euler axis solve adds exactly 2 D dt to the variance along its axis (infinite lattice). A
    # decay share s inside the solve scales that by 1 / (1 + s), s ~ lambda dt / d: a first-order coupling error.
    share = consistent_share(decay * dt, ndim)
    spread = 1.0 if mode == "split" else 1.0 / (1.0 + share)
    np.testing.assert_allclose(msd, 2 * ndim * D0 * t_end * spread, rtol=1e-3)

    mass = float(got.sum())
    # Each no-flux solve conserves the sum; the decay divides it by (1 + lambda dt) per step, or by (1 + s) in
    # each axis solve when it sits in the operator (s the consistent share: (1 + s) ** d ~ 1 + lambda dt).
    per_step = 1.0 + decay * dt if mode == "split" else (1.0 + share) ** ndim
    np.testing.assert_allclose(mass, per_step ** (-nsteps), rtol=64 * eps(dtype))
    # Backward Euler decay: relative error ~ lambda^2 t dt / 2.
    np.testing.assert_allclose(mass, math.exp(-decay * t_end), rtol=decay**2 * t_end * dt + 64 * eps(dtype))


# ---------------------------------------------------------------------------------------------------------------
# Scratch buffer handling
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
def test_scratch_buffer_optional_and_in_place(xp, ndim, dtype):
    rng = np.random.default_rng(10)
    shape = (9, 6) if ndim == 2 else (7, 6, 5)
    varying = xp.asarray(D0 * rng.uniform(0.5, 1.5, shape))
    factors = lod_factors(shape, DX, 0.4, varying, [(0.5, None)] * ndim, dtype=dtype, xp=xp)
    c0 = random_field(rng, shape, xp, dtype)
    results = []
    for scratch in (None, xp.empty(lod_scratch_size(shape), dtype=dtype), xp.empty(3, dtype=dtype)):
        c = c0.copy()
        for _ in range(3):
            assert lod_diffuse(c, factors, scratch) is c
        results.append(to_host(c))
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


# ---------------------------------------------------------------------------------------------------------------
# 9. Input validation
# ---------------------------------------------------------------------------------------------------------------


@NDIMS
@DTYPES
def test_validation_boundaries_length(xp, ndim, dtype):
    shape = (6,) * ndim
    with pytest.raises(ValueError, match=f"boundaries has {ndim + 1} axes"):
        lod_factors(shape, DX, 0.1, D0, no_flux(ndim + 1), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=f"boundaries has {ndim - 1} axes"):
        lod_factors(shape, DX, 0.1, D0, no_flux(ndim - 1), dtype=dtype, xp=xp)


@NDIMS
@DTYPES
def test_validation_negative_diffusivity(xp, ndim, dtype):
    shape = (6,) * ndim
    with pytest.raises(ValueError, match=r"got -12\.5"):
        lod_factors(shape, DX, 0.1, -12.5, no_flux(ndim), dtype=dtype, xp=xp)
    bad = np.full(shape, D0)
    bad[(1,) * ndim] = -3.0
    with pytest.raises(ValueError, match=r"-3\.0"):
        lod_factors(shape, DX, 0.1, xp.asarray(bad), no_flux(ndim), dtype=dtype, xp=xp)
    wrong = (7,) + (6,) * (ndim - 1)
    with pytest.raises(ValueError, match=re.escape(f"diffusivity has shape {wrong}")):
        lod_factors(shape, DX, 0.1, xp.full(wrong, D0), no_flux(ndim), dtype=dtype, xp=xp)


@NDIMS
@DTYPES
def test_validation_spacing_and_dt(xp, ndim, dtype):
    shape = (6,) * ndim
    with pytest.raises(ValueError, match=r"got -1\.0 and 0\.1"):
        lod_factors(shape, -1.0, 0.1, D0, no_flux(ndim), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=r"got 10\.0 and 0\.0"):
        lod_factors(shape, DX, 0.0, D0, no_flux(ndim), dtype=dtype, xp=xp)
    with pytest.raises(ValueError, match=r"-0\.25"):
        lod_factors(shape, DX, 0.1, D0, no_flux(ndim), dtype=dtype, xp=xp, decay_per_min=-0.25)


@NDIMS
@DTYPES
def test_validation_field_shape_and_dtype(xp, ndim, dtype):
    shape = (6,) * ndim
    factors = lod_factors(shape, DX, 0.1, D0, no_flux(ndim), dtype=dtype, xp=xp)
    wrong_shape = (6,) * (ndim - 1) + (5,)
    with pytest.raises(ValueError, match=re.escape(f"field is {wrong_shape} {np.dtype(dtype).name}")):
        lod_diffuse(xp.zeros(wrong_shape, dtype=dtype), factors)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match=re.escape(f"field is {shape} {np.dtype(other).name}")):
        lod_diffuse(xp.zeros(shape, dtype=other), factors)
