"""Choosing the GPU (``--device N``) and recording what ran the model, checked with a stand-in for CuPy."""

from __future__ import annotations

import sys
import types

import h5py
import pytest

from abm import backend as backend_module
from abm.backend import Backend, BackendError, select_device
from abm.cli import main


class _FakeRuntime:
    def __init__(self, n):
        self.n, self.current = n, 0

    def getDeviceCount(self):
        return self.n

    def getDevice(self):
        return self.current

    def getDeviceProperties(self, index):
        return {"name": f"NVIDIA H200 #{index}".encode(), "totalGlobalMem": 150_000_000_000, "major": 9, "minor": 0}

    def driverGetVersion(self):
        return 12080

    def runtimeGetVersion(self):
        return 12060


@pytest.fixture
def fake_cupy(monkeypatch):
    """A module named ``cupy`` with two CUDA devices: only what device choice and device_info read."""
    runtime = _FakeRuntime(2)

    class Device:
        def __init__(self, index):
            self.index = index

        def use(self):
            runtime.current = self.index

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "13.6.0"
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


def test_select_device_makes_that_gpu_current(fake_cupy):
    select_device(1)
    assert fake_cupy.cuda.runtime.getDevice() == 1


def test_a_device_that_does_not_exist_is_refused_naming_the_range(fake_cupy):
    with pytest.raises(BackendError, match=r"--device 2: CuPy finds 2 CUDA device\(s\), numbered 0 to 1"):
        select_device(2)


def test_device_info_names_the_gpu_driver_runtime_and_cupy(fake_cupy):
    select_device(1)
    info = Backend("cupy", fake_cupy).device_info()
    assert info == {"gpu_index": 1, "gpu_name": "NVIDIA H200 #1", "gpu_memory_bytes": 150_000_000_000,
                    "gpu_compute_capability": "9.0", "cuda_driver_version": 12080, "cuda_runtime_version": 12060,
                    "cupy_version": "13.6.0"}
    assert Backend("numpy", __import__("numpy")).device_info() == {}


def test_device_flag_errors_exit_2_naming_the_flag(fake_cupy, tmp_path, capsys):
    argv = ["run", "configs/quickstart.toml", "--set", "time.duration_min=6", "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*argv, "--backend", "numpy", "--device", "0"]) == 2
    assert "--device 0 picks a GPU, but the backend is 'numpy'" in capsys.readouterr().err
    assert main([*argv, "--backend", "cupy", "--device", "5"]) == 2
    assert "--device 5: CuPy finds 2 CUDA device(s)" in capsys.readouterr().err
    assert not (tmp_path / "r" / "sim.h5").exists()


def test_the_run_file_and_log_record_the_device(monkeypatch, tmp_path):
    info = {"gpu_index": 0, "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_memory_bytes": 85_000_000_000,
            "gpu_compute_capability": "9.0", "cuda_driver_version": 12040, "cuda_runtime_version": 12040,
            "cupy_version": "13.6.0"}
    monkeypatch.setattr(backend_module.Backend, "device_info", lambda self: info)
    out = tmp_path / "r"
    assert main(["run", "configs/quickstart.toml", "--set", "time.duration_min=6", "--out", str(out), "--quiet"]) == 0
    with h5py.File(out / "sim.h5", "r") as f:
        assert {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k in info} == info
    assert "GPU 0: NVIDIA H100 80GB HBM3, CUDA driver 12040, runtime 12040, CuPy 13.6.0" in (out / "run.log").read_text()
