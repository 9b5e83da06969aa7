"""Restart and branching from snapshots, the run loader, and ``tme inspect``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_tree_equal, quickstart_scene

from abm.cli import main
from abm.io import open_run
from abm.runner import run_simulation

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.toml"
DT = 6.0
N_STEPS = 10  # the half run; the full run is 2N


def small_config(ndim: int, duration_min: float, extra=()):
    shape = "[24,24]" if ndim == 2 else "[16,16,16]"
    return quickstart_scene([
        f"grid.shape={shape}", f"time.duration_min={duration_min}", "output.snapshot_interval_min=30",
        "backend=numpy", "output.summary_plot=false", "initial.tumour.radius_um=100", *extra,
    ])


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def runs(request, tmp_path_factory):
    """A 2N-step run and an N-step run of the same config (module-scoped: shared by the tests below)."""
    ndim = request.param
    root = tmp_path_factory.mktemp(f"runs{ndim}d")
    full = run_simulation(small_config(ndim, 2 * N_STEPS * DT), root / "full", progress=False)
    half = run_simulation(small_config(ndim, N_STEPS * DT), root / "half", progress=False)
    return {"ndim": ndim, "root": root, "full": full.h5_path, "half": half.h5_path}


def assert_states_equal(a: dict, b: dict) -> None:
    assert_tree_equal(a, b)


def test_cli_replay_continues_bit_identically(runs, capsys):
    t_half, t_end = N_STEPS * DT, 2 * N_STEPS * DT
    out = runs["root"] / "continued"
    rc = main(["replay", str(runs["half"]), "--from", str(t_half), "--until", str(t_end), "--out", str(out),
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    with open_run(runs["full"]) as full, open_run(out / "sim.h5") as cont:
        assert cont.times[0] == t_half and cont.times[-1] == t_end
        assert int(cont.steps[-1]) == 2 * N_STEPS
        assert_states_equal(full.state(t_end), cont.state(t_end))
        # Every snapshot after the restart point matches, and so does the time series after the first row.
        for t in cont.times:
            assert_states_equal(full.state(t), cont.state(t))
        ts_full, ts_cont = full.timeseries(), cont.timeseries()
        after = ts_full["time_min"] > t_half
        for name in ts_full:
            np.testing.assert_array_equal(ts_full[name][after], ts_cont[name][1:], err_msg=name)
        assert cont.attrs["branch_overrides"] == "[]"


def test_branch_differs_after_and_matches_at_the_branch_point(runs):
    from abm.replay import default_replay_dir, replay_run

    t_branch, t_end = N_STEPS * DT, 2 * N_STEPS * DT
    parent = runs["full"]
    before = parent.read_bytes()
    result = replay_run(parent, t_branch + 1.0, until_min=t_end, progress=False,
                        overrides=["tumour.apoptosis_rate_per_min=0.01"])
    assert result.out_dir == default_replay_dir(parent, t_branch)
    assert result.out_dir.name == f"full-replay-t{t_branch:g}"
    assert parent.read_bytes() == before  # the parent is never touched
    with open_run(parent) as p, open_run(result.h5_path) as b:
        assert b.times[0] == t_branch  # the snapshot just before the requested time
        assert_states_equal(p.state(t_branch), b.state(t_branch))
        n_parent = len(p.agents(t_end, "tumour")["voxel"])
        n_branch = len(b.agents(t_end, "tumour")["voxel"])
        assert n_branch < n_parent  # a 100-fold apoptosis rate thins the tumour
        attrs = b.attrs
        assert attrs["parent_file"] == str(parent.resolve())
        assert attrs["branch_time_min"] == t_branch and attrs["branch_step"] == N_STEPS
        assert json.loads(attrs["branch_overrides"]) == ["tumour.apoptosis_rate_per_min=0.01"]
        assert attrs["parent_config_toml"] == p.config_toml
        assert b.config().tumour.apoptosis_rate_per_min == 0.01


def test_replay_never_replaces_its_parent(runs, capsys):
    parent_dir = str(runs["full"].parent)
    assert main(["replay", str(runs["full"]), "--from", "0", "--out", parent_dir, "--quiet"]) == 2
    assert "never overwrites its parent" in capsys.readouterr().err
    assert main(["replay", str(runs["full"]), "--from", "0", "--out", parent_dir, "--overwrite", "--quiet"]) == 2
    assert "never overwrites its parent" in capsys.readouterr().err
    with open_run(runs["full"]) as run:
        assert run.complete and len(run) == 5


def test_inspect_json_matches_the_file(runs, capsys):
    path = runs["full"]
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with h5py.File(path, "r") as f:
        names = sorted(f["snapshots"])
        assert info["format"] == f.attrs["format"] and info["format_version"] == f.attrs["format_version"]
        assert info["software_version"] == f.attrs["software_version"]
        assert info["backend"] == f.attrs["backend"] and info["seed"] == f.attrs["seed"]
        assert info["grid"]["shape"] == list(f["grid"].attrs["shape"])
        assert info["grid"]["spacing_um"] == f["grid"].attrs["spacing_um"]
        assert info["snapshots"]["count"] == len(names)
        assert info["snapshots"]["times_min"] == [f["snapshots"][k].attrs["time_min"] for k in names]
        assert info["time_span_min"] == [0.0, float(f["timeseries/time_min"][-1])]
        assert info["timeseries_rows"] == f["timeseries/time_min"].shape[0]
        assert info["agents"]["first"]["tumour"] == f[f"snapshots/{names[0]}/agents/tumour/voxel"].shape[0]
        assert info["agents"]["last"]["tumour"] == f[f"snapshots/{names[-1]}/agents/tumour/voxel"].shape[0]
        assert info["agents"]["last"]["tumour"] == f["timeseries/tumour_cells"][-1]
        assert info["fields"] == sorted(f[f"snapshots/{names[0]}/fields"])
        assert info["complete"] is bool(f.attrs["complete"]) is True
    assert info["therapies"] == []
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "therapies     none" in text and "complete      yes" in text and f"seed {info['seed']}" in text


def test_loader_api(runs):
    path = runs["full"]
    with open_run(path) as run:
        assert run.ndim == runs["ndim"] and run.times.tolist() == [0, 30, 60, 90, 120]
        fields = run.fields(45.0)  # the snapshot just before
        assert fields["oxygen"].shape == run.shape and fields["oxygen"].dtype == np.float32
        cells = run.agents(30.0, "tumour")
        from abm.modules.tumour.module import COLUMNS

        assert set(cells) == set(COLUMNS)
        coords = run.voxel_coords(cells["voxel"])
        assert coords.shape == (len(cells["voxel"]), run.ndim)
        np.testing.assert_array_equal(np.ravel_multi_index(coords.T, run.shape), cells["voxel"])
        ts = run.timeseries()
        assert next(iter(ts)) == "time_min" and ts["tumour_cells"].shape == ts["time_min"].shape
        assert run.config().grid.shape == list(run.shape)
        assert run.snapshot_state(60.0)["step"] == 10
    assert not run.h5.id.valid  # closed by the context manager
    pd = pytest.importorskip("pandas")
    with open_run(path) as run:
        frame = run.agents(30.0, "tumour", frame=True)
        assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(cells)
        tsf = run.timeseries_frame()
        assert tsf.index.name == "time_min" and len(tsf) == len(ts["time_min"])


def test_nested_snapshot_state_round_trips(tmp_path):
    """Future PK compartments and pending doses are nested groups under state/."""
    from abm.io import RunWriter

    state = {
        "fields": {"oxygen": np.ones((4, 5), np.float32)},
        "agents": {"tumour": {"voxel": np.arange(3, dtype=np.int64)}},
        "state": {"step": 7, "time_min": 42.0, "necrotic": np.zeros((4, 5), bool),
                  "pk": {"nivolumab": {"central_mg_per_L": 1.5, "peripheral_mg_per_L": 0.25}},
                  "pending_doses": {"nivolumab": {"time_min": np.array([100.0, 200.0]),
                                                  "dose_mg_per_kg": np.array([3.0, 3.0])}}},
    }
    w = RunWriter(tmp_path / "x.h5", "name = 'x'\n", 1, "numpy", (4, 5), 20.0, readouts={},
                  field_units={"oxygen": "mmHg"})
    w.write_snapshot(state)
    w.close()
    with open_run(tmp_path / "x.h5") as run:
        back = run.state(42.0)
    assert back["state"]["pk"]["nivolumab"]["central_mg_per_L"] == 1.5
    np.testing.assert_array_equal(back["state"]["pending_doses"]["nivolumab"]["time_min"], [100.0, 200.0])
    assert back["state"]["necrotic"].dtype == bool and back["state"]["step"] == 7


@pytest.fixture(scope="module")
def bad_files(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"bad{runs['ndim']}")
    truncated = root / "truncated.h5"
    data = runs["full"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = root / "notes.h5"
    text.write_text("not an HDF5 file\n")
    foreign = root / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
        f["x"] = np.arange(3)
    copy = root / "copy.h5"
    shutil.copy(runs["full"], copy)
    return {"truncated": truncated, "text": text, "foreign": foreign, "good": copy}


COMMANDS = {
    "inspect": lambda p, tmp: ["inspect", str(p)],
    "replay": lambda p, tmp: ["replay", str(p), "--from", "30", "--out", str(tmp / "r"), "--quiet"],
    "plot": lambda p, tmp: ["plot", str(p), "--out", str(tmp / "plots")],
    "movie": lambda p, tmp: ["movie", str(p), "-o", str(tmp / "m.gif"), "--quiet"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["truncated", "text", "foreign"])
def test_unusable_files_exit_2_naming_the_file(bad_files, command, kind, tmp_path, capsys):
    path = bad_files[kind]
    assert main(COMMANDS[command](path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tme: error: ") and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "m.gif").exists() and not (tmp_path / "r" / "sim.h5").exists()


@pytest.mark.parametrize("args, needle", [
    (["replay", "{f}", "--from", "-5"], "no snapshot at or before t = -5 min"),
    (["replay", "{f}", "--from", "1000"], "after the end of the run"),
    (["replay", "{f}", "--from", "120", "--until", "60"], "not after the branch snapshot"),
    (["plot", "{f}", "--times", "9999"], "after the end of the run"),
    (["movie", "{f}", "-o", "{tmp}/m.mp4", "--layers", "tumour,tumor,oxgen"],
     "unknown layer 'tumor', 'oxgen'; valid layers: tumour, necrotic, vessels, oxygen"),
    (["movie", "{f}", "-o", "{tmp}/m.mp4", "--start", "500"], "no snapshot between"),
    (["movie", "{f}", "-o", "{tmp}/m.avi"], "unsupported movie format"),
])
def test_bad_times_and_layers_exit_2(bad_files, args, needle, tmp_path, capsys):
    argv = [a.format(f=bad_files["good"], tmp=tmp_path) for a in args]
    assert main([*argv, "--quiet"] if argv[0] in ("replay", "movie") else argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    if "unsupported" not in needle:
        assert str(bad_files["good"]) in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_truncated_file_in_a_separate_process_exits_2_without_traceback(bad_files, runs, tmp_path):
    import subprocess
    import sys

    path = bad_files["truncated"]
    for args in (["inspect", str(path)], ["replay", str(path), "--from", "0", "--out", str(tmp_path / "r")]):
        proc = subprocess.run([sys.executable, "-m", "abm.cli", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"tme: error: {path}") and "Traceback" not in proc.stderr


def test_replay_is_bit_identical_on_each_backend(backend_name, tmp_path):
    """The same check through the Python API on NumPy and (where a GPU is found) CuPy."""
    from abm.replay import replay_run

    extra = [f"backend={backend_name}"]
    full = run_simulation(small_config(2, 2 * N_STEPS * DT, extra), tmp_path / "full", progress=False)
    half = run_simulation(small_config(2, N_STEPS * DT, extra), tmp_path / "half", progress=False)
    cont = replay_run(half.h5_path, N_STEPS * DT, until_min=2 * N_STEPS * DT, progress=False)
    with open_run(full.h5_path) as a, open_run(cont.h5_path) as b:
        assert b.attrs["backend"] == a.attrs["backend"] == backend_name
        assert_states_equal(a.state(2 * N_STEPS * DT), b.state(2 * N_STEPS * DT))
