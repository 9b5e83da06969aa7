"""Engine behaviour: lattice kernels, reproducibility, restart, spheroid growth and necrosis, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from conftest import assert_tree_equal, to_host

from abm.config import parse_config
from abm.io import RunWriter, load_snapshot_state
from abm.model import Simulation
from kernels.lattice import moore_offsets, neighbours, resolve_conflicts

REPO = Path(__file__).resolve().parents[1]


def small_config(**over):
    base = {"backend": "numpy", "seed": 11, "grid": {"shape": [40, 40]}, "vessels": {"density": 0.03},
            "initial": {"tumour": {"radius_um": 120}}}
    for key, value in over.items():
        node = base
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_config(base)


# --------------------------------------------------------------------------------------------------------------
# Lattice kernels
def test_moore_offsets():
    assert moore_offsets(2).shape == (8, 2) and moore_offsets(3).shape == (26, 3)
    assert not (moore_offsets(3) == 0).all(axis=1).any()


def test_neighbours_flag_outside_voxels(xp):
    shape = (4, 5)
    voxels = xp.asarray(np.ravel_multi_index(([0, 3, 2], [0, 4, 2]), shape))
    flat, inside = neighbours(voxels, shape, xp.asarray(moore_offsets(2)))
    inside = to_host(inside)
    assert inside.sum(axis=1).tolist() == [3, 3, 8]
    centre = sorted(to_host(flat)[2])
    assert centre == sorted(np.ravel_multi_index(([1, 1, 1, 2, 2, 3, 3, 3], [1, 2, 3, 1, 3, 1, 2, 3]), shape))


def test_resolve_conflicts_one_winner_per_voxel_independent_of_order(xp):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 50, 400)
    priority = rng.random(400)
    won = to_host(resolve_conflicts(xp.asarray(targets), xp.asarray(priority)))
    assert len(np.unique(targets[won])) == won.sum() == len(np.unique(targets))
    for t in np.unique(targets):  # the winner has the highest priority among its rivals
        rivals = np.nonzero(targets == t)[0]
        assert won[rivals[np.argmax(priority[rivals])]]
    perm = rng.permutation(400)
    won_perm = to_host(resolve_conflicts(xp.asarray(targets[perm]), xp.asarray(priority[perm])))
    assert np.array_equal(won_perm, won[perm])


# --------------------------------------------------------------------------------------------------------------
# Schedule and state
def _assert_state_equal(a: dict, b: dict):
    assert_tree_equal(a, b)


def test_exclusive_occupancy_and_counts_add_up():
    sim = Simulation(small_config())
    for _ in range(150):
        before = len(sim.tumour)
        sim.step()
        m = sim.metrics()
        vox = sim.tumour["voxel"]
        assert len(np.unique(vox)) == len(vox), "two tumour cells share a voxel"
        assert not sim.necrotic.reshape(-1)[vox].any() and not sim.vessels.reshape(-1)[vox].any()
        died = m["tumour_deaths_apoptosis"] + m["tumour_deaths_necrosis"]
        assert len(sim.tumour) == before + m["tumour_births"] - died


def test_same_seed_same_numbers_and_other_seed_differs():
    runs = []
    for seed in (5, 5, 6):
        sim = Simulation(small_config(seed=seed))
        for _ in range(60):
            sim.step()
        runs.append(sim.state())
    _assert_state_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0]["agents"]["tumour"]["voxel"], runs[2]["agents"]["tumour"]["voxel"])


def test_restart_from_snapshot_is_bit_identical(tmp_path):
    cfg = small_config()
    straight = Simulation(cfg)
    for _ in range(80):
        straight.step()

    first = Simulation(cfg)
    for _ in range(40):
        first.step()
    path = tmp_path / "half.h5"
    writer = RunWriter(path, "", cfg.seed, "numpy", first.shape, first.spacing_um,
                       readouts=first.readout_declarations(), field_units=first.field_units())
    writer.write_snapshot(first.state())
    writer.close()
    _, state, t = load_snapshot_state(path)
    assert t == 40 * cfg.time.dt_min
    resumed = Simulation.from_state(cfg, state)
    for _ in range(40):
        resumed.step()
    _assert_state_equal(straight.state(), resumed.state())


def test_rules_can_be_switched_off():
    sim = Simulation(small_config(tumour__rules=["oxygen_uptake", "apoptosis"]))
    n0 = len(sim.tumour)
    for _ in range(100):
        sim.step()
        assert sim.metrics()["tumour_births"] == 0
    assert len(sim.tumour) < n0


# --------------------------------------------------------------------------------------------------------------
# Spheroid behaviour
def test_2d_growth_faster_than_linear_in_cells_and_linear_in_diameter():
    """A nodule grows at its rim: cell number accelerates while the diameter advances at a steady speed."""
    days = np.arange(0, 10.01, 0.5)
    diam, cells = [], []
    for seed in (1, 2, 3):
        cfg = parse_config({"backend": "numpy", "seed": seed, "grid": {"shape": [64, 64]},
                            "vessels": {"pattern": "none"}, "initial": {"tumour": {"radius_um": 50}}})
        sim = Simulation(cfg)
        d, n = [], []
        for k in range(len(days)):
            target = int(round(days[k] * 1440 / cfg.time.dt_min))
            while sim.step_index < target:
                sim.step()
            m = sim.metrics()
            d.append(m["tumour_diameter_um"])
            n.append(m["tumour_cells"])
        diam.append(d)
        cells.append(n)
    diam, cells = np.mean(diam, axis=0), np.mean(cells, axis=0)
    half = len(days) // 2
    assert cells[-1] - cells[half] > cells[half] - cells[0]  # faster than linear (3 seeds of a ~16-cell seed: noisy)
    assert np.polyfit(days, cells, 2)[0] > 0
    late = days >= 2
    slope, intercept = np.polyfit(days[late], diam[late], 1)
    resid = diam[late] - (slope * days[late] + intercept)
    assert slope > 0 and 1 - resid.var() / diam[late].var() > 0.97  # close to linear in diameter
    mid, end = (days >= 2) & (days <= 6), days >= 6
    ratio = np.polyfit(days[end], diam[end], 1)[0] / np.polyfit(days[mid], diam[mid], 1)[0]
    assert 0.6 < ratio < 1.6


def _spheroid(radius_um, steps):
    cfg = parse_config({"backend": "numpy", "seed": 4, "grid": {"shape": [54, 54, 54]},
                        "vessels": {"pattern": "none"}, "initial": {"tumour": {"radius_um": radius_um}}})
    sim = Simulation(cfg)
    for _ in range(steps):
        sim.step()
    return sim


def test_3d_spheroid_grows_necrotic_core_only_past_oxygen_limit():
    centre_um = 54 * 20 / 2
    big = _spheroid(480, 90)
    core = big.fields["oxygen"].data[26:29, 26:29, 26:29]  # the 3x3x3 centre: one voxel alone is noisy
    assert core.mean() < big.config.tumour.necrosis_onset_mmHg
    necrotic = np.argwhere(big.necrotic)
    assert len(necrotic) > 20
    r = np.linalg.norm((necrotic + 0.5) * 20 - centre_um, axis=1)
    assert np.median(r) < 0.5 * 480 and r.max() < 480 - 100  # in the core, not at the rim
    small = _spheroid(200, 90)
    assert small.fields["oxygen"].data[27, 27, 27] > small.config.tumour.necrosis_onset_mmHg
    assert not small.necrotic.any()


# --------------------------------------------------------------------------------------------------------------
# Crash safety and signals
def _start_run(tmp_path, extra):
    cfg = tmp_path / "long.toml"
    cfg.write_text(
        'name = "long"\nbackend = "numpy"\n[grid]\nshape = [60, 60]\n[time]\nduration_min = 600000\n'
        '[output]\nsnapshot_interval_min = 12\ntimeseries_every_steps = 1\nsummary_plot = false\n'
    )
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "abm.cli", "run", str(cfg), "--out", str(tmp_path / "out"),
                             "--quiet", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_snapshots(path: Path, n: int, proc, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if path.exists():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    if len(f["snapshots"]) >= n:
                        return
            except (OSError, KeyError):
                pass
        time.sleep(0.2)
    raise AssertionError(f"no {n} snapshots in {path} after {timeout} s")


def test_sigkill_leaves_a_readable_file_with_flushed_snapshots(tmp_path):
    proc = _start_run(tmp_path, [])
    h5 = tmp_path / "out" / "sim.h5"
    try:
        _wait_for_snapshots(h5, 3, proc)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with h5py.File(h5, "r") as f:
        assert not f.attrs["complete"]
        names = sorted(f["snapshots"])
        assert len(names) >= 3
        for name in names[:-1]:  # every snapshot before the last is fully readable
            g = f["snapshots"][name]
            assert g["fields/oxygen"][()].shape == (60, 60)
            assert g["agents/tumour/voxel"][()].ndim == 1
    _, state, t = load_snapshot_state(h5, time_min=12.0)
    assert t == 12.0 and state["state"]["step"] == 2


def test_sigterm_writes_final_snapshot_and_closes_cleanly(tmp_path):
    proc = _start_run(tmp_path, [])
    h5 = tmp_path / "out" / "sim.h5"
    try:
        _wait_for_snapshots(h5, 2, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    with h5py.File(h5, "r") as f:
        assert f.attrs["complete"] and f.attrs["end_reason"] == "interrupted"
        last = f["snapshots"][sorted(f["snapshots"])[-1]]
        assert last.attrs["time_min"] == f["timeseries/time_min"][-1]


def test_missing_gpu_backend_is_a_user_error(tmp_path):
    # Hide CuPy from the child process (it may be installed here) so the missing-CuPy path always runs.
    hidden = tmp_path / "no_cupy" / "cupy"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'cupy'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden.parent), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "abm.cli", "run", str(REPO / "configs/quickstart.toml"),
                           "--backend", "cupy", "--out", str(tmp_path / "o"), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "CuPy" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------------------
# Field secretion and the random streams
def test_secrete_accumulates_repeated_voxels(xp):
    from abm.engine.fields import DiffusingField, face_boundaries

    field = DiffusingField("x", "-", xp, (6, 5), 20.0, 6.0, 100.0, 0.0, face_boundaries(2, "noflux", 0.0, {}), 0.0)
    voxels = np.array([3, 7, 3, 29, 3, 0])
    field.secrete(xp.asarray(voxels), 0.5)  # a scalar per entry: repeats add up
    amounts = np.arange(1.0, 7.0)
    field.secrete(xp.asarray(voxels), xp.asarray(amounts))  # per-entry amounts
    want = np.bincount(voxels, minlength=30) * 0.5 + np.bincount(voxels, weights=amounts, minlength=30)
    got = to_host(field.source).reshape(-1)
    assert got.dtype == np.float32 and np.allclose(got, want)


def test_step_random_streams_are_reproducible_and_distinct():
    from abm.backend import StepRandom

    def draw(seed, step, stream):
        return StepRandom(np, seed, step, stream).random(1000)

    a = draw(3, 10, 7)
    assert np.array_equal(a, draw(3, 10, 7))
    others = [draw(4, 10, 7), draw(3, 11, 7), draw(3, 10, 8), draw(3, 0, 7)]
    for b in others:
        assert not np.any(a == b)  # 1000 doubles from unrelated streams never coincide
    # Consecutive steps are disjoint blocks of one generator's period: step 11 is not a shifted step 10.
    assert not np.any(np.isin(draw(3, 11, 7), a))
    u = np.concatenate([draw(3, s, 7) for s in range(50)])
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
