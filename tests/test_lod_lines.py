"""The one-thread-per-line LOD kernel (``kernels/cuda/lod_lines.cu``) against the NumPy plane sweeps.

The kernel source is C99 that also compiles as host C. The host build runs every line of every axis solve in a
loop, through the same Python wiring (:func:`kernels.diffusion.lod_diffuse` with line factors) that launches the
CUDA kernel on CuPy, so its arithmetic is checked on any machine with a C compiler. With CuPy and a device, the
compiled kernel itself is compared with NumPy on the same inputs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
from conftest import _cupy_or_skip, to_host

from kernels import lod_lines
from kernels.diffusion import AxisLines, _line_factors, lod_diffuse, lod_factors, lod_scratch_size

DX = 10.0  # µm
DT = 3.0  # min
D0 = 1500.0  # µm²/min; D dt / dx² = 45, far beyond the explicit limit
SHAPES = {2: (13, 11), 3: (9, 8, 7)}  # distinct odd lengths, so a wrong stride or base cannot go unnoticed
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
NDIMS = pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
# Relative to the largest value: the kernel forms sums in another order than the plane sweeps, and for a varying D
# it forms the pivots in the field dtype where the plane sweeps factor in float64.
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}

# name: (varying D, per-voxel sink, source, Dirichlet faces, uniform decay 1/min)
CASES = {
    "static-uniform": (False, False, True, True, 0.05),
    "static-varying": (True, False, True, True, 0.05),
    "static-varying-noflux": (True, False, False, False, 0.0),
    "sink-uniform": (False, True, True, True, 0.05),
    "sink-varying": (True, True, False, True, 0.0),
    "sink-uniform-noflux": (False, True, True, False, 0.02),
}
CASE = pytest.mark.parametrize("case", list(CASES))


def _compiler():
    return shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    """The kernel source, as assembled for NVRTC, built as a host shared library and loaded with ctypes."""
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH: the host build of kernels/cuda/lod_lines.cu cannot be "
                    "checked; install gcc (.ci/run does so when run as root)")
    folder = tmp_path_factory.mktemp("lod_lines")
    source, library = folder / "lod_lines.c", folder / "liblod_lines.so"
    source.write_text(lod_lines.kernel_source(), encoding="utf-8")
    build = subprocess.run([compiler, "-x", "c", "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
                            str(source), "-o", str(library)], capture_output=True, text=True)
    assert build.returncode == 0, f"host build of the kernel failed:\n{build.stderr}"
    lib = ctypes.CDLL(str(library))
    for dtype, real in ((np.float32, ctypes.c_float), (np.float64, ctypes.c_double)):
        fn = getattr(lib, lod_lines.kernel_name(dtype))
        fn.argtypes = [ctypes.c_void_p] * 8 + [real] * 3 + [ctypes.c_longlong] * 3
        fn.restype = None
    return lib


def host_launch(lib):
    """A ``launch(name, lines, args)`` that runs the host build over all lines (see :class:`LODFactors`)."""

    def launch(name, lines, args):
        converted = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, "the kernel gets a non-contiguous array"
                converted.append(a.ctypes.data)
            else:
                converted.append(a if a is None else a.item())
        assert converted[-1] == lines
        getattr(lib, name)(*converted)

    return launch


def problem(ndim, dtype, case, seed=3):
    """Shape, factor inputs, initial field, sink and source (host arrays) of one test case."""
    varying, with_sink, with_source, dirichlet, decay = CASES[case]
    rng = np.random.default_rng(seed)
    shape = SHAPES[ndim]
    diffusivity = D0 * rng.uniform(0.05, 3.0, shape) if varying else D0
    bounds = [(38.0, None), (None, 5.0), (2.0, 0.5)][:ndim] if dirichlet else [(None, None)] * ndim
    field = rng.uniform(0.0, 40.0, shape).astype(dtype)
    sink = (rng.uniform(0.0, 20.0, shape) * (rng.random(shape) < 0.4)).astype(dtype) if with_sink else None
    source = rng.uniform(0.0, 50.0, shape).astype(dtype) if with_source else None
    return shape, diffusivity, bounds, decay, field, sink, source


def run_steps(field, factors, sink, source, steps=3):
    scratch = np.empty(lod_scratch_size(field.shape), dtype=field.dtype)
    for _ in range(steps):
        lod_diffuse(field, factors, scratch, sink_per_min=sink, source=source)
    return field


def assert_close(actual, expected, dtype):
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    assert scale > 1.0, "the test field has decayed away"
    err = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max()) / scale
    assert err <= TOLERANCE[dtype], f"max relative difference {err:.3g} > {TOLERANCE[dtype]:g}"


@CASE
@NDIMS
@DTYPES
def test_host_build_matches_plane_sweeps(host_kernel, ndim, dtype, case):
    shape, diffusivity, bounds, decay, field, sink, source = problem(ndim, dtype, case)
    planes = lod_factors(shape, DX, DT, diffusivity, bounds, dtype, np, decay_per_min=decay)
    lines = _line_factors(shape, DX, DT, diffusivity, bounds, dtype, np, decay, host_launch(host_kernel))
    expected = run_steps(field.copy(), planes, sink, source)
    actual = run_steps(field.copy(), lines, sink, source)
    assert np.abs(expected - field).max() > 1.0, "the test problem hardly changes"
    assert_close(actual, expected, dtype)


@NDIMS
def test_host_build_reversed_axis_order(host_kernel, ndim):
    """Without a sink the step follows the order of ``factors.axes``; the kernel path honours a reordering."""
    shape, diffusivity, bounds, decay, field, _, source = problem(ndim, np.float64, "static-varying")
    planes = lod_factors(shape, DX, DT, diffusivity, bounds, np.float64, np, decay_per_min=decay)
    lines = _line_factors(shape, DX, DT, diffusivity, bounds, np.float64, np, decay, host_launch(host_kernel))
    flip = [dataclasses.replace(f, axes=f.axes[::-1]) for f in (planes, lines)]
    expected = run_steps(field.copy(), flip[0], None, source, steps=1)
    actual = run_steps(field.copy(), flip[1], None, source, steps=1)
    assert np.abs(expected - run_steps(field.copy(), planes, None, source, steps=1)).max() > 1e-3
    assert_close(actual, expected, np.float64)


@NDIMS
def test_varying_d_keeps_one_conductance_array_per_axis(ndim):
    """The line factors of a varying D hold the ``n + 1`` face conductances per line, one array per axis."""
    shape = SHAPES[ndim]
    diffusivity = D0 * np.random.default_rng(1).uniform(0.5, 2.0, shape)
    factors = _line_factors(shape, DX, DT, diffusivity, [(1.0, None)] * ndim, np.float32, np, 0.0, None)
    for f in factors.axes:
        assert isinstance(f, AxisLines) and f.table is None
        expected_shape = list(shape)
        expected_shape[f.axis] += 1
        assert f.faces.shape == tuple(expected_shape) and f.faces.dtype == np.float32
        first = np.take(f.faces, 0, axis=f.axis)
        np.testing.assert_allclose(first, 2 * np.take(diffusivity, 0, axis=f.axis) * DT / DX**2, rtol=1e-6)
        assert not np.take(f.faces, shape[f.axis], axis=f.axis).any()  # no-flux high faces
    uniform = _line_factors(shape, DX, DT, D0, [(1.0, None)] * ndim, np.float64, np, 0.0, None)
    assert all(f.faces is None and f.table.shape == (5, shape[f.axis]) for f in uniform.axes)


def test_line_factors_reject_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64.*float16"):
        _line_factors((4, 4), DX, DT, D0, [(None, None)] * 2, np.float16, np, 0.0, None)


@pytest.mark.gpu
@CASE
@NDIMS
@DTYPES
def test_cupy_kernel_matches_numpy(ndim, dtype, case):
    cupy = _cupy_or_skip()
    shape, diffusivity, bounds, decay, field, sink, source = problem(ndim, dtype, case)
    expected = run_steps(field.copy(), lod_factors(shape, DX, DT, diffusivity, bounds, dtype, np,
                                                   decay_per_min=decay), sink, source)
    d_gpu = diffusivity if np.ndim(diffusivity) == 0 else cupy.asarray(diffusivity)
    factors = lod_factors(shape, DX, DT, d_gpu, bounds, dtype, cupy, decay_per_min=decay)
    assert factors.launch is lod_lines.cuda_launch and isinstance(factors.axes[0], AxisLines)
    on_gpu = cupy.asarray(field)
    scratch = cupy.empty(lod_scratch_size(shape), dtype=dtype)
    sink_gpu = None if sink is None else cupy.asarray(sink)
    source_gpu = None if source is None else cupy.asarray(source)
    for _ in range(3):
        lod_diffuse(on_gpu, factors, scratch, sink_per_min=sink_gpu, source=source_gpu)
    assert_close(to_host(on_gpu), expected, dtype)
