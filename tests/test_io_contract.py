"""The run-file contract: declared readouts, units, version-1 files, write failures, deep configs, io layering."""

from __future__ import annotations

import ast
import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from abm import FORMAT_VERSION
from abm.io import RunWriteError, RunWriter, open_run

REPO = Path(__file__).resolve().parents[1]

READOUTS = {
    "tumour_cells": ("cells", "count"),
    "tumour_births": ("cells", "event"),
    "hypoxic_fraction": ("1", "ratio"),
    "lesion_shape_code": ("", "code"),
    "nivolumab_tissue": ("mg/L", "level"),  # a drug level named without a drug prefix: found by its unit
    "drug_plasma_mg_per_L": ("mg/L", "level"),  # starts after the first dose
}
FIELD_UNITS = {"oxygen": "mmHg"}


def _state(t: float, step: int, shape=(6, 5)) -> dict:
    return {
        "fields": {"oxygen": np.full(shape, t, np.float32)},
        "agents": {"tumour": {"voxel": np.arange(3, dtype=np.int64), "quiescent": np.zeros(3, bool)}},
        "state": {"step": step, "time_min": t, "necrotic": np.zeros(shape, bool)},
    }


def _writer(path, **kw) -> RunWriter:
    kw.setdefault("readouts", READOUTS)
    kw.setdefault("field_units", FIELD_UNITS)
    return RunWriter(path, 'name = "contract"\n', 3, "numpy", (6, 5), 20.0, **kw)


def _row(t: float, **extra) -> dict:
    return {"time_min": t, "tumour_cells": 10 + t, "tumour_births": 1.0, "hypoxic_fraction": 0.25,
            "lesion_shape_code": 1.0, "nivolumab_tissue": 0.0, **extra}


# ------------------------------------------------------------------------------------------------------------------
# Declared readouts and units
def test_every_declared_metric_has_a_dataset_with_unit_and_kind_from_the_start(tmp_path):
    path = tmp_path / "empty.h5"
    _writer(path).close()
    with h5py.File(path) as f:
        assert int(f.attrs["format_version"]) == FORMAT_VERSION == 2
        ts = f["timeseries"]
        assert set(ts) == {"time_min", *READOUTS}
        assert (ts["time_min"].attrs["unit"], ts["time_min"].attrs["kind"]) == ("min", "level")
        for name, (unit, kind) in READOUTS.items():
            assert ts[name].shape == (0,) and ts[name].attrs["unit"] == unit and ts[name].attrs["kind"] == kind


def test_a_metric_that_starts_late_is_nan_before_and_fields_carry_units(tmp_path):
    path = tmp_path / "sim.h5"
    w = _writer(path, buffer_rows=2)  # rows reach the file in several appends
    for t in (0.0, 6.0, 12.0):
        w.record(_row(t))
    w.write_snapshot(_state(12.0, 2))
    for t in (18.0, 24.0):
        w.record(_row(t, drug_plasma_mg_per_L=t / 10))
    w.write_snapshot(_state(24.0, 4))
    w.close(end_reason="finished")
    with open_run(path) as run:
        ts = run.timeseries()
        assert list(ts)[0] == "time_min" and set(ts) == {"time_min", *READOUTS}
        np.testing.assert_array_equal(ts["time_min"], [0, 6, 12, 18, 24])
        np.testing.assert_array_equal(ts["drug_plasma_mg_per_L"][:3], [np.nan] * 3)
        np.testing.assert_allclose(ts["drug_plasma_mg_per_L"][3:], [1.8, 2.4])
        assert run.timeseries_units()["nivolumab_tissue"] == "mg/L" and run.timeseries_units()["time_min"] == "min"
        assert run.timeseries_kinds() == {"time_min": "level", **{k: kind for k, (_, kind) in READOUTS.items()}}
        assert run.field_units() == {"oxygen": "mmHg"}
        assert run.h5["snapshots/000001/fields/oxygen"].attrs["unit"] == "mmHg"


def test_undeclared_metric_and_field_are_refused_naming_them(tmp_path):
    w = _writer(tmp_path / "sim.h5")
    with pytest.raises(ValueError, match=r"'tumour_cell'.*nearest declared: tumour_cells"):
        w.record({"time_min": 0.0, "tumour_cell": 5.0})
    with pytest.raises(ValueError, match="time_min"):
        w.record({"tumour_cells": 5.0})
    state = _state(0.0, 0)
    state["fields"]["ecm_density"] = np.zeros((6, 5), np.float32)
    with pytest.raises(ValueError, match="ecm_density.*no declared unit"):
        w.write_snapshot(state)
    w.close()
    with open_run(tmp_path / "sim.h5") as run:
        assert len(run) == 0 and run.h5["timeseries/time_min"].shape == (0,)  # nothing half-written
    with pytest.raises(ValueError, match="kind 'amount'"):
        _writer(tmp_path / "bad.h5", readouts={"x": ("mg", "amount")})
    with pytest.raises(TypeError):
        RunWriter(tmp_path / "old.h5", "", 1, "numpy", (6, 5), 20.0)  # declarations are required


def test_plots_choose_panels_by_declared_kind(tmp_path):
    pytest.importorskip("matplotlib")
    from abm.plots import drug_metrics, event_metrics, plot_run, plot_summary, population_metrics

    path = tmp_path / "run" / "sim.h5"
    path.parent.mkdir()
    w = _writer(path)
    for t in (0.0, 6.0):
        w.record(_row(t, drug_plasma_mg_per_L=t))
    w.write_snapshot(_state(6.0, 1))
    w.close()
    with open_run(path) as run:
        ts, kinds, units = run.timeseries(), run.timeseries_kinds(), run.timeseries_units()
    assert population_metrics(ts, kinds) == ["tumour_cells"]
    assert event_metrics(ts, kinds) == ["tumour_births"]
    assert sorted(drug_metrics(ts, kinds, units)) == ["drug_plasma_mg_per_L", "nivolumab_tissue"]
    result = plot_run(path, tmp_path / "plots", dpi=40)
    assert {p.name for p in result.written} >= {"populations.png", "drugs.png", "hypoxia.png"}
    assert plot_summary(path, tmp_path / "summary.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------------------------
# Version-1 files
def _write_v1(path: Path) -> None:
    """A file as format version 1 wrote it: no unit or kind attributes, no complete flag on snapshots."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "tme-abm", "format_version": 1, "software_version": "0.1.0",
                        "created_utc": "2025-01-01T00:00:00+00:00", "seed": 1, "backend": "numpy",
                        "config_toml": 'name = "old"\n', "complete": True, "end_reason": "finished"})
        f.create_group("grid").attrs.update({"shape": np.array([4, 3]), "spacing_um": 20.0})
        ts = f.create_group("timeseries")
        t = np.array([0.0, 6.0, 12.0])
        ts["time_min"] = t
        ts["tumour_cells"] = [5.0, 6.0, 7.0]
        ts["tumour_births"] = [0.0, 1.0, 1.0]
        ts["hypoxic_fraction"] = [0.0, 0.1, 0.2]
        ts["tumour_diameter_um"] = [40.0, 42.0, 44.0]
        ts["drug_tissue"] = [0.0, 0.5, 0.4]
        for k, time in enumerate((0.0, 12.0)):
            g = f.create_group(f"snapshots/{k:06d}")
            g.attrs.update({"time_min": time, "step": 2 * k})
            g["fields/oxygen"] = np.full((4, 3), 30.0 + k, np.float32)
            g["agents/tumour/voxel"] = np.arange(5 + 2 * k, dtype=np.int64)
            st = g.create_group("state")
            st.attrs.update({"step": 2 * k, "time_min": time})
            st["necrotic"] = np.eye(4, 3, dtype=np.uint8)
            st["necrotic"].attrs["bool"] = True


def test_version_1_files_are_still_read_and_plotted(tmp_path):
    path = tmp_path / "old" / "sim.h5"
    path.parent.mkdir()
    _write_v1(path)
    with open_run(path) as run:
        assert run.format_version == 1 and run.complete
        np.testing.assert_array_equal(run.times, [0.0, 12.0])
        assert run.fields(12.0)["oxygen"][0, 0] == 31.0
        np.testing.assert_array_equal(run.timeseries()["tumour_cells"], [5, 6, 7])
        state = run.state(12.0)
        assert state["state"]["step"] == 2 and state["state"]["necrotic"].dtype == bool
        assert set(run.timeseries_units().values()) == {""} and run.field_units() == {"oxygen": ""}
        kinds = run.timeseries_kinds()
        assert (kinds["tumour_cells"], kinds["tumour_births"], kinds["hypoxic_fraction"]) == ("count", "event",
                                                                                              "ratio")
        assert kinds["drug_tissue"] == kinds["tumour_diameter_um"] == "level"
    if importlib.util.find_spec("matplotlib"):
        from abm.plots import plot_run, plot_summary

        written = {p.name for p in plot_run(path, tmp_path / "plots", dpi=40).written}
        assert {"populations.png", "burden.png", "drugs.png", "fields_t0.png"} <= written
        assert plot_summary(path, tmp_path / "summary.png").exists()


# ------------------------------------------------------------------------------------------------------------------
# Write failures (disk full)
def _fail_on_call(monkeypatch, n: int) -> None:
    """Make the n-th snapshot's state write raise ENOSPC, as h5py does when the disk is full."""
    import abm.io.writer as writer_module

    real = writer_module.write_state
    calls = {"n": 0}

    def write_state(group, state, comp):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28)")
        real(group, state, comp)

    monkeypatch.setattr(writer_module, "write_state", write_state)


def test_writer_failure_keeps_earlier_snapshots_and_marks_the_file(tmp_path, monkeypatch):
    path = tmp_path / "sim.h5"
    _fail_on_call(monkeypatch, 3)
    w = _writer(path)
    assert (tmp_path / ".sim.h5.reserve").stat().st_size > 0
    for step, t in enumerate((0.0, 6.0)):
        w.record(_row(t))
        w.write_snapshot(_state(t, step))
    w.record(_row(12.0))
    with pytest.raises(RunWriteError) as err:
        w.write_snapshot(_state(12.0, 2))
    exc = err.value
    assert (exc.errno, exc.time_min, exc.last_snapshot_min, exc.what) == (errno.ENOSPC, 12.0, 6.0, "snapshot")
    with pytest.raises(RunWriteError):  # nothing more is written after a failure
        w.record(_row(18.0))
    w.abort()  # what the runner's clean-up does
    assert exc.marked is True and not (tmp_path / ".sim.h5.reserve").exists()
    msg = str(exc)
    assert msg.startswith(f"{path}: could not write snapshot at t = 12 min: no space left on device (errno 28).")
    assert f"up to t = 6 min is readable; free space and `tme replay {path} --from 6`" in msg
    assert 'end_reason = "write_failed"' in msg
    with open_run(path) as run:
        np.testing.assert_array_equal(run.times, [0.0, 6.0])  # the half-written snapshot is skipped
        assert not run.complete and run.attrs["end_reason"] == "write_failed"
        assert run.h5["snapshots/000002"].attrs["complete"] == 0
        assert run.fields(6.0)["oxygen"][0, 0] == 6.0


def test_cli_run_that_fills_the_disk_exits_2_with_one_message(tmp_path, monkeypatch, capsys):
    """Needs Simulation.readout_declarations() and field_units(), which the runner passes to the writer."""
    from abm.cli import main

    _fail_on_call(monkeypatch, 3)
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs/quickstart.toml"), "--set", "grid.shape=[24,24]", "--set",
            "time.duration_min=60", "--set", "output.snapshot_interval_min=12", "--backend", "numpy",
            "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    h5 = out / "sim.h5"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{h5}: could not write snapshot at t = 24 min: no space left on device (errno 28)" in err
    assert f"Every snapshot up to t = 12 min is readable; free space and `tme replay {h5} --from 12`" in err
    with open_run(h5) as run:
        np.testing.assert_array_equal(run.times, [0.0, 12.0])
        assert run.attrs["end_reason"] == "write_failed" and not run.complete
    assert "could not write snapshot" in (out / "run.log").read_text()
    assert not (out / "summary.png").exists() and not (out / ".sim.h5.reserve").exists()


_FILL_SCRIPT = """
import sys
import numpy as np
from abm.io import RunWriteError, RunWriter

shape = (48, 48)
rng = np.random.default_rng(0)
w = RunWriter(sys.argv[1], "", 1, "numpy", shape, 20.0, readouts={"tumour_cells": ("cells", "count")},
              field_units={"oxygen": "mmHg"}, compression=0)
try:
    for step in range(10_000):
        w.record({"time_min": 6.0 * step, "tumour_cells": float(step)})
        w.write_snapshot({"fields": {"oxygen": rng.random(shape, dtype=np.float32)},
                          "agents": {"tumour": {"voxel": np.arange(50, dtype=np.int64)}},
                          "state": {"step": step, "time_min": 6.0 * step}})
except RunWriteError as exc:
    w.abort()
    print(exc)
    sys.exit(2)
"""


def test_a_real_full_disk_stops_cleanly(tmp_path):
    """On a 2 MiB tmpfs (root only; skipped where mounting is not allowed): no crash, earlier snapshots kept."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        path = mount / "sim.h5"
        proc = subprocess.run([sys.executable, "-c", _FILL_SCRIPT, str(path)], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert proc.returncode == 2, proc.stdout + proc.stderr  # not 139: HDF5 did not crash
        assert "Traceback" not in proc.stderr and proc.stderr.strip() == "", proc.stderr
        assert "no space left on device (errno 28)" in proc.stdout and "write_failed" in proc.stdout
        with open_run(path) as run:
            assert len(run) > 5 and run.attrs["end_reason"] == "write_failed"
            run.state(run.times[-1])
            assert run.timeseries()["time_min"][-1] >= run.times[-1]
        assert not (mount / ".sim.h5.reserve").exists()
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ------------------------------------------------------------------------------------------------------------------
# Deeply nested configs
DEEP = "[" * 5000 + "]" * 5000


def test_deeply_nested_toml_exits_2_naming_the_file(tmp_path, capsys):
    from abm.cli import main

    deep = tmp_path / "deep.toml"
    deep.write_text(f"a = {DEEP}\n")
    assert main(["validate", str(deep)]) == 2
    err = capsys.readouterr().err
    assert f"{deep}:" in err and "nested too deeply" in err and "Traceback" not in err
    assert main(["validate", str(REPO / "configs/quickstart.toml"), "--set", f"grid.shape={DEEP}"]) == 2
    err = capsys.readouterr().err
    assert "--set value is nested too deeply" in err and "Traceback" not in err
    assert main(["replay", str(tmp_path / "none.h5"), "--from", "0", "--set", f"grid.shape={DEEP}"]) == 2
    assert "--set value is nested too deeply" in capsys.readouterr().err


def test_deeply_nested_toml_in_a_fresh_process_has_no_traceback(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text(f"a = {DEEP}\n")
    proc = subprocess.run([sys.executable, "-m", "abm.cli", "run", str(deep), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nested too deeply" in proc.stderr


# ------------------------------------------------------------------------------------------------------------------
# Layering of abm.io
def test_io_modules_import_each_other_without_a_cycle_or_private_names():
    """Every import between abm.io modules (at the top or inside a function) goes one way, of public names."""
    io_dir = REPO / "abm" / "io"
    graph, private = {}, []
    for path in sorted(io_dir.glob("*.py")):
        name = f"abm.io.{path.stem}"
        if path.stem == "__init__":
            continue
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("abm.io."):
                graph[name].add(node.module)
                private += [f"{name} imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("abm.io.")}
    assert not private, private
    assert graph["abm.io.state"] == set() and graph["abm.io.reader"] == set()
    order, pending = [], dict(graph)
    while pending:  # peel modules whose imports are all placed; a cycle leaves some that never are
        ready = [m for m, deps in pending.items() if deps <= set(order)]
        assert ready, f"import cycle among {sorted(pending)}"
        order += sorted(ready)
        for m in ready:
            del pending[m]
    code = textwrap.dedent("""
        from abm.io import (CELL_LAYERS, RunFile, RunFileError, RunWriteError, RunWriter, load_snapshot_state,
                            open_h5, open_run, read_snapshot_state, snapshot_name)
        from abm.io.writer import read_snapshot_state as from_writer
        assert from_writer is read_snapshot_state
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr  # the public names still import, in a fresh interpreter


# ----------------------------------------------------------------------------------------------------------
# The documented snapshot contents equal what a run writes
def _documented_snapshot_contents() -> dict:
    text = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text(encoding="utf-8")
    block = text.split("The contents, by module", 1)[1].split("```", 2)[1]
    fields, agents, state = {}, {}, set()
    for line in block.splitlines():
        parts = line.split()
        if not parts:
            continue
        path = parts[0]
        if path.startswith("fields/"):
            fields[path[len("fields/"):]] = parts[1]
        elif path.startswith("agents/"):
            agents[path.split("/")[1]] = [c.strip(",") for c in parts[1:]]
        elif path.startswith("state/"):
            state.add(path[len("state/"):])
    return {"fields": fields, "agents": agents, "state": state}


def test_snapshot_contents_equal_the_documented_ones(tmp_path):
    from abm.config import parse_config
    from abm.io import open_run
    from abm.runner import run_simulation

    cfg = parse_config({"name": "doc", "backend": "numpy", "grid": {"shape": [30, 30]},
                        "time": {"duration_min": 12.0}, "initial": {"tumour": {"radius_um": 150.0}},
                        "immune": {"enabled": True, "caf": {"stroma_density": 0.1}},
                        "fields": {"vegf": {"large_molecule": True}},
                        "output": {"summary_plot": False}})
    result = run_simulation(cfg, tmp_path / "doc", progress=False)
    documented = _documented_snapshot_contents()
    with open_run(result.h5_path) as run:
        g = run.h5["snapshots"][sorted(run.h5["snapshots"])[-1]]
        assert {k: g["fields"][k].attrs["unit"] for k in g["fields"]} == documented["fields"]
        assert sorted(g["agents"]) == sorted(documented["agents"])
        for table in g["agents"]:
            assert sorted(g["agents"][table]) == sorted(documented["agents"][table]), table
        written = set()
        for module, group in g["state"].items():
            written |= {f"{module}/{k}" for k in group}
            written |= {f"{module}/@{k}" for k in group.attrs}
        assert written == documented["state"]
        assert set(g["state"].attrs) == {"step", "time_min"}
