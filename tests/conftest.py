"""Shared fixtures: the array backends the suite runs on.

Tests that take the ``xp`` fixture run once on NumPy and once on CuPy; the CuPy run is marked ``gpu`` and skips
cleanly where CuPy is missing or finds no CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest


def _cupy_or_skip():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy finds no CUDA device")
    except Exception as exc:  # CUDA driver missing or broken
        pytest.skip(f"CuPy finds no CUDA device ({exc})")
    return cupy


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Array namespace of the backend under test (``numpy`` or ``cupy``)."""
    if request.param == "numpy":
        return np
    return _cupy_or_skip()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend_name(request):
    """Name of the simulation backend under test, for config-level tests."""
    if request.param == "cupy":
        _cupy_or_skip()
    return request.param


def to_host(a):
    """Return a NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def assert_tree_equal(a, b, path: str = "") -> None:
    """Assert two nested state mappings (dicts of arrays and scalars) are identical, dtypes included."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}/{key}")
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
    np.testing.assert_array_equal(a, b, err_msg=path)


def quickstart_scene(overrides=(), immune: bool = False, therapy: bool = False):
    """The quickstart's tumour, vessels and oxygen as a Config, by default without its immune layer and therapy.

    Tests of the engine, files and plots use it for a small known scene with one field.
    """
    import tomllib
    from pathlib import Path

    from abm.config import apply_overrides, parse_config

    path = Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    if not therapy:
        data.pop("therapy", None)
    if not immune:
        data["immune"] = {"enabled": False}
    return parse_config(apply_overrides(data, list(overrides)), str(path))
