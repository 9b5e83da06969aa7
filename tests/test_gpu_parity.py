"""The CuPy backend against the NumPy one: the same outcomes in distribution, the same run-file layout.

With ``random = "auto"`` the two backends draw different random numbers (PCG64 on NumPy, Philox on CuPy), and
floating-point sums differ in the last place anyway, so single runs differ; what must agree is the distribution
of outcomes over seeds and the structure of what is written. The GPU tests are marked ``gpu``
and skip without a CUDA device. The CPU tests here check the comparison helpers NumPy against NumPy.

Run time: the stochastic parity test runs 20 seeds per backend of a 40x40 scene for 120 steps, about 7 s a run on
one CPU core, on up to 8 processes per backend (well under a minute on a 16-core GPU machine); the layout test
runs every bundled config for 3 steps on each backend (one to two minutes, most of it CuPy compiling kernels on a
fresh machine).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import _cupy_or_skip, quickstart_scene
from parity_helpers import (
    PARITY_OUTCOMES,
    PARITY_SEEDS,
    compare_samples,
    h5_layout,
    layout_differences,
    parity_sample,
    run_briefly,
    run_configs,
)

from abm.runner import run_simulation


# ------------------------------------------------------------------------------------------------------------------
# The helpers, on the CPU
def test_compare_samples_accepts_one_distribution_and_rejects_a_shift():
    rng = np.random.default_rng(3)
    a = {"x": rng.normal(100.0, 10.0, 20)}
    same = {"x": rng.normal(100.0, 10.0, 20)}
    shifted = {"x": rng.normal(130.0, 10.0, 20)}
    assert compare_samples(a, same)["x"]["ok"]
    verdict = compare_samples(a, shifted)["x"]
    assert not verdict["ok"] and verdict["ks_p"] < 0.01


def test_mean_criterion_allows_seed_noise_but_not_a_shift_beyond_it():
    z = np.linspace(-1.5, 1.5, 20)  # the same quantiles in both samples: only the means differ
    noisy = compare_samples({"x": 10.0 + 5.0 * z}, {"x": 10.8 + 5.0 * z})["x"]
    assert noisy["ok"] and noisy["mean_diff"] > 0.05 * 10.8  # beyond 5 %, within 3 standard errors
    tight = compare_samples({"x": 10.0 + 0.1 * z}, {"x": 10.8 + 0.1 * z})["x"]
    assert not tight["ok"] and tight["mean_diff"] > tight["allowed"]


def test_layouts_of_two_seeds_match_and_a_changed_dtype_or_missing_dataset_is_named(tmp_path):
    paths = []
    for seed in (1, 2):
        cfg = quickstart_scene([f"seed={seed}", "time.duration_min=18.0", "output.snapshot_interval_min=6.0",
                               "output.summary_plot=false"])
        paths.append(run_simulation(cfg, tmp_path / f"s{seed}", progress=False).h5_path)
    a, b = h5_layout(paths[0]), h5_layout(paths[1])
    assert any("/agents/tumour/" in f"/{p}" for p in a) and "timeseries/tumour_cells" in a
    assert layout_differences(a, b) == []
    field = next(p for p, v in a.items() if v[0] == "dataset" and "/fields/" in f"/{p}")
    with h5py.File(paths[1], "a") as f:
        data = f[field][()]
        del f[field], f["timeseries/tumour_cells"]
        f[field] = data.astype(np.float64 if data.dtype != np.float64 else np.float32)
    diff = layout_differences(a, h5_layout(paths[1]))
    assert "timeseries/tumour_cells: only in the first file" in diff
    assert any(line.startswith(f"{field}: ('dataset'") for line in diff)


# ------------------------------------------------------------------------------------------------------------------
# CuPy against NumPy
@pytest.mark.gpu
def test_cupy_outcomes_match_numpy_in_distribution_over_seeds():
    _cupy_or_skip()
    workers = min(8, os.cpu_count() or 1)
    cpu = parity_sample("numpy", PARITY_SEEDS, workers)
    gpu = parity_sample("cupy", PARITY_SEEDS, workers)
    verdict = compare_samples(cpu, gpu)
    assert set(verdict) == set(PARITY_OUTCOMES)
    assert cpu["kills"].mean() > 0 and cpu["cd8_density_core"].mean() > 0  # the scene exercises killing
    bad = {k: v for k, v in verdict.items() if not v["ok"]}
    assert not bad, f"CuPy and NumPy outcomes differ: {bad}"


@pytest.mark.gpu
@pytest.mark.parametrize("path", run_configs(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_runs_on_cupy_and_writes_the_numpy_layout(path, tmp_path):
    _cupy_or_skip()
    cpu = h5_layout(run_briefly(path, "numpy", tmp_path / "numpy"))
    gpu = h5_layout(run_briefly(path, "cupy", tmp_path / "cupy"))
    assert layout_differences(cpu, gpu) == []
