"""Parameter sweeps (``tme batch``): design expansion, validation, the run/skip/rebuild cycle, failures,
Ctrl-C, the Dask executor and SLURM job scripts.

Every batch here is the quickstart scene cut to a 32x32 grid and two simulated days in 30-minute steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abm.cli import main
from abm.cohort.batch import run_batch
from abm.cohort.executors import ExecutorSpec, SlurmSpec
from abm.cohort.sweep import Design, SweepConfig, load_sweep
from abm.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"
TINY = {
    "grid.shape": "[32, 32]",
    "time.dt_min": "30.0",
    "time.duration_min": "2880.0",
    "initial.tumour.radius_um": "80.0",
    "output.summary_plot": "false",
    "output.snapshots": '"final"',
}
TINY_SET = "\n".join(f'"{k}" = {v}' for k, v in TINY.items())
READOUTS = ["tumour_cells", "tumour_diameter_um", "cd8_core", "tcell_effector", "macrophage_m2"]


def write_sweep(folder: Path, body: str, name: str = "sweep") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(f'base = "{QUICKSTART.as_posix()}"\nname = "{name}"\nseed = 11\n{body}\n[set]\n{TINY_SET}\n',
                    encoding="utf-8")
    return path


FOUR = """
[grid]
"immune.priming_initial" = [0.2, 0.8]
"immune.tcell.recruitment_per_min" = [5.0e-4, 2.0e-3]
"""


# ------------------------------------------------------------------------------------------------------------
# Design: grid, zip, samples, seeds


def sweep_of(**data) -> SweepConfig:
    return SweepConfig.model_validate({"base": "x.toml", **data})


def test_grid_is_the_cartesian_product_last_key_fastest():
    sweep = sweep_of(grid={"a.x": [1, 2, 3], "a.y": [10, 20]}, zip={"b.u": [0.1, 0.2], "b.v": [5, 6]}, replicates=2)
    members = list(Design(sweep, 1))
    assert len(members) == len(Design(sweep, 1)) == 3 * 2 * 2 * 2
    assert [m.id for m in members[:3]] == ["m0000", "m0001", "m0002"]
    points = [m.params for m in members[::2]]
    assert points[0] == {"a.x": 1, "a.y": 10, "b.u": 0.1, "b.v": 5}
    assert points[1] == {"a.x": 1, "a.y": 10, "b.u": 0.2, "b.v": 6}  # zip rows vary together
    assert points[2] == {"a.x": 1, "a.y": 20, "b.u": 0.1, "b.v": 5}
    assert len({tuple(sorted(p.items())) for p in points}) == 12


def test_zipped_lists_of_different_lengths_are_refused_with_their_lengths():
    with pytest.raises(ValueError, match=r"a\.x \(3\), a\.y \(2\)"):
        sweep_of(zip={"a.x": [1, 2, 3], "a.y": [1, 2]})


def test_a_key_in_two_blocks_and_a_varied_seed_are_refused():
    with pytest.raises(ValueError, match="'a.x' is set in both"):
        sweep_of(set={"a.x": 1}, grid={"a.x": [1, 2]})
    with pytest.raises(ValueError, match="use replicates"):
        sweep_of(grid={"seed": [1, 2]})


@pytest.mark.parametrize("method, n", [("lhs", 20), ("sobol", 16)])
def test_samples_lie_in_their_ranges_and_follow_the_root_seed(method, n):
    ranges = {"a.lin": {"low": -2.0, "high": 3.0}, "a.log": {"low": 1e-4, "high": 1e-1, "log": True},
              "a.int": {"low": 1, "high": 9, "integer": True}}
    sweep = sweep_of(sample={"method": method, "n": n, "ranges": ranges})
    first = [m.params for m in Design(sweep, 5)]
    assert len(first) == n
    lin = np.array([p["a.lin"] for p in first])
    log = np.array([p["a.log"] for p in first])
    assert lin.min() >= -2 and lin.max() <= 3 and np.ptp(lin) > 2.5
    assert log.min() >= 1e-4 and log.max() <= 1e-1
    # uniform in log10: about as many points per decade
    decades = np.histogram(np.log10(log), bins=[-4, -3, -2, -1])[0]
    assert decades.min() >= n // 3 - 2
    assert all(isinstance(p["a.int"], int) and 1 <= p["a.int"] <= 9 for p in first)
    if method == "lhs":  # one point per stratum of every axis
        assert sorted(np.floor((lin + 2) / 5 * n).astype(int)) == list(range(n))
    assert [m.params for m in Design(sweep, 5)] == first
    assert [m.params for m in Design(sweep, 6)] != first


def test_sobol_needs_a_power_of_two():
    with pytest.raises(ValueError, match="use 8 or 16"):
        sweep_of(sample={"method": "sobol", "n": 12, "ranges": {"a.x": {"low": 0, "high": 1}}})


def test_replicate_seeds_are_distinct_spawned_from_the_root_and_shared_across_points():
    sweep = sweep_of(grid={"a.x": [1, 2]}, replicates=5)
    members = list(Design(sweep, 42))
    seeds = [m.seed for m in members]
    assert len(set(seeds[:5])) == 5 and seeds[:5] == seeds[5:]  # replicate r has one seed at every point
    children = np.random.SeedSequence(42).spawn(2)[1].spawn(5)
    assert seeds[:5] == [int(c.generate_state(1, np.uint64)[0]) >> 1 for c in children]
    assert all(0 <= s < 2**63 for s in seeds)
    assert [m.seed for m in Design(sweep, 42)] == seeds
    assert [m.seed for m in Design(sweep, 43)] != seeds


# ------------------------------------------------------------------------------------------------------------
# Validation and the command line


def test_unknown_sweep_key_exits_2_naming_it(tmp_path, capsys):
    path = write_sweep(tmp_path, 'replicatse = 2\n[grid]\n"immune.priming_initial" = [0.2]')
    assert main(["batch", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "replicatse: unknown key" in err and "did you mean 'replicates'" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_missing_base_config_exits_2_naming_the_file(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('base = "nowhere/base.toml"\n', encoding="utf-8")
    assert main(["batch", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and str(tmp_path / "nowhere" / "base.toml") in err


def test_an_invalid_member_key_or_value_stops_the_batch_before_it_starts(tmp_path, capsys):
    path = write_sweep(tmp_path, '[grid]\n"immune.tcell.recruitmnt_per_min" = [1e-3]')
    out = tmp_path / "out"
    assert main(["batch", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "member m0000" in err and "immune.tcell.recruitmnt_per_min: unknown key" in err
    assert "did you mean 'immune.tcell.recruitment_per_min'" in err
    path = write_sweep(tmp_path, '[grid]\n"immune.priming_initial" = [0.5, -1.0]')
    assert main(["batch", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "member m0001" in err and "immune.priming_initial = -1.0" in err
    assert not list(out.glob("m*"))


# ------------------------------------------------------------------------------------------------------------
# Running, skipping, rebuilding, failing


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """The 4-member sweep run once on a local pool of two processes."""
    folder = tmp_path_factory.mktemp("four")
    path = write_sweep(folder, FOUR)
    t0 = time.perf_counter()
    result = run_batch(path, executor=ExecutorSpec("local", workers=2), out_dir=folder / "out", progress=False)
    return path, folder / "out", result, time.perf_counter() - t0


def test_a_sweep_runs_every_member_and_writes_the_summary(four):
    path, out, result, _ = four
    assert result.counts == {"done": 4} and result.ran == 4
    table = pd.read_parquet(out / "summary.parquet")
    assert list(table["member"]) == ["m0000", "m0001", "m0002", "m0003"]
    assert list(table["immune.priming_initial"]) == [0.2, 0.2, 0.8, 0.8]
    assert list(table["immune.tcell.recruitment_per_min"]) == [5e-4, 2e-3, 5e-4, 2e-3]
    assert (table["status"] == "done").all() and table["error"].isna().all() and (table["wall_s"] > 0).all()
    assert (table["end_time_min"] == 2880).all()
    csv = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(csv[READOUTS], table[READOUTS], check_dtype=False)
    from abm.io import open_run

    for row in table.itertuples():
        with open_run(out / row.member / "sim.h5") as run:
            assert run.complete and len(run) == 1 and run.times[0] == 2880  # output.snapshots = "final"
            assert run.attrs["seed"] == row.seed
            ts = run.timeseries(["tumour_cells", "cd8_core"])
        assert ts["tumour_cells"][-1] == row.tumour_cells and ts["cd8_core"][-1] == row.cd8_core
        assert (out / row.member / "config.resolved.toml").is_file()
    # more priming, more CD8 cells in the core at the same seed (common random numbers across points)
    assert table.loc[3, "tcell_effector"] > table.loc[1, "tcell_effector"]


def test_rerun_skips_finished_members_and_rebuilds_a_deleted_one(four):
    path, out, _, _ = four
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("m*/sim.h5")}
    lines = len(_journal(out))
    again = run_batch(path, executor=ExecutorSpec("local", workers=2), out_dir=out, progress=False)
    assert again.ran == 0 and again.skipped == 4 and again.counts == {"done": 4}
    assert {p: p.stat().st_mtime_ns for p in out.glob("m*/sim.h5")} == mtimes
    assert len(_journal(out)) == lines
    before = pd.read_parquet(out / "summary.parquet")
    (out / "m0002" / "sim.h5").unlink()
    rebuilt = run_batch(path, executor=ExecutorSpec("serial"), out_dir=out, progress=False)
    assert rebuilt.ran == 1 and rebuilt.skipped == 3
    assert [r["member"] for r in _journal(out)[lines:]] == ["m0002"]
    for p, t in mtimes.items():
        assert (p.stat().st_mtime_ns == t) == (p.parent.name != "m0002")
    after = pd.read_parquet(out / "summary.parquet")
    pd.testing.assert_frame_equal(after[READOUTS], before[READOUTS])  # same config and seed, same numbers


def test_a_member_counts_as_finished_only_with_the_same_resolved_config(four):
    from abm.cohort.batch import member_finished
    from abm.io import open_run

    _, out, _, _ = four
    h5 = out / "m0001" / "sim.h5"
    with open_run(h5) as run:
        stored = run.config_toml
    assert member_finished(h5, stored)
    changed = stored.replace("compression = 4", "compression = 1")
    assert changed != stored and not member_finished(h5, changed)
    assert not member_finished(out / "m0001" / "missing.h5", stored)


def test_a_member_failing_at_run_time_is_recorded_and_the_others_complete(tmp_path):
    # 100000 initial T cells is a valid value; only the model finds the seeding shell too small
    path = write_sweep(tmp_path, '[zip]\n"immune.initial_tcells" = [0, 100000, 5]\n"immune.priming_initial" = '
                       '[0.2, 0.2, 0.3]')
    out = tmp_path / "out"
    result = run_batch(path, executor=ExecutorSpec("serial"), out_dir=out, progress=False)
    assert result.counts == {"done": 2, "failed": 1}
    table = pd.read_csv(out / "summary.csv")
    failed = table.set_index("member").loc["m0001"]
    assert failed["status"] == "failed" and "immune.initial_tcells = 100000" in failed["error"]
    assert "seeding shell" in (out / "m0001" / "error.txt").read_text()
    assert np.isnan(failed["tumour_cells"])
    assert list(table["status"]) == ["done", "failed", "done"]
    again = run_batch(path, executor=ExecutorSpec("serial"), out_dir=out, progress=False)
    assert again.ran == 1 and again.counts == {"done": 2, "failed": 1}  # only the failed member is retried


def test_ctrl_c_stops_the_batch_cleanly_and_a_rerun_resumes(tmp_path):
    body = '[grid]\n"immune.priming_initial" = [0.1, 0.2, 0.3, 0.4]'
    path = write_sweep(tmp_path, body)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "abm.cli", "batch", str(path), "--out", str(out), "--workers", "2", "--quiet",
           "--set", "time.duration_min=14400.0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # its own process group, which gets the SIGINT, as a terminal's Ctrl-C reaches the batch and its workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 90
    while not (out / "m0001" / "sim.h5").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "batch interrupted" in stderr and "run the same command again" in stderr
    table = pd.read_csv(out / "summary.csv")
    assert "interrupted" in set(table["status"]) and set(table["status"]) <= {"interrupted", "pending"}
    assert table.loc[3, "status"] == "pending"  # never started
    from abm.io import open_run

    for member in table.loc[table["status"] == "interrupted", "member"]:
        with open_run(out / member / "sim.h5") as run:
            assert run.complete and run.attrs["end_reason"] == "interrupted" and len(run) == 1
    resumed = run_batch(path, executor=ExecutorSpec("serial"), out_dir=out, overrides=[
        "time.duration_min=720.0"], progress=False)
    assert resumed.ran == 4 and resumed.counts == {"done": 4}


# ------------------------------------------------------------------------------------------------------------
# Dask and SLURM


def test_a_dask_local_cluster_gives_the_same_results_as_the_local_pool(four, tmp_path):
    pytest.importorskip("distributed")
    path, out, _, _ = four
    result = run_batch(path, executor=ExecutorSpec("dask", dask_local=2), out_dir=tmp_path / "dask",
                       progress=False)
    assert result.counts == {"done": 4}
    pool = pd.read_parquet(out / "summary.parquet")
    dask = pd.read_parquet(tmp_path / "dask" / "summary.parquet")
    pd.testing.assert_frame_equal(dask[["member", "seed", *READOUTS]], pool[["member", "seed", *READOUTS]])


def test_the_slurm_job_script_asks_for_the_account_partition_gpus_and_walltime():
    pytest.importorskip("dask_jobqueue")
    from abm.adapters.dask_runner import slurm_cluster

    spec = SlurmSpec(account="onco", partition="gpu", gpus_per_job=2, walltime="02:30:00", cores=8,
                     memory="32GB", prologue=("module load cuda/12.4",), job_extra=("--qos=short",))
    cluster = slurm_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("-A onco", "-p gpu", "-t 02:30:00", "--gres=gpu:2", "--qos=short", "--cpus-per-task=8",
                      "--mem=30G"):
        assert any(line.startswith("#SBATCH") and directive in line for line in lines), directive
    assert "module load cuda/12.4" in script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith(sys.executable)
    assert "--nworkers 2" in worker and "--resources tme_slot=1" in worker and "--nthreads 4" in worker


def _slurm_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "idle" in states.split() or "mixed" in states.split()


def test_a_two_job_batch_runs_on_slurm_through_dask_jobqueue(tmp_path, monkeypatch):
    if not _slurm_ready():
        pytest.skip("no SLURM controller with an idle node (.ci/slurm_localhost.sh starts one)")
    body = ('[grid]\n"immune.priming_initial" = [0.2, 0.8]\n[executor]\nkind = "slurm"\n[executor.slurm]\n'
            f'account = "tme"\njobs = 2\ncores = 1\nmemory = "2GB"\nwalltime = "00:10:00"\n'
            f'log_directory = "{(tmp_path / "logs").as_posix()}"\n')
    path = write_sweep(tmp_path, body)
    # the jobs inherit this environment and must import this tree's abm
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    result = run_batch(path, out_dir=tmp_path / "out", overrides=["time.duration_min=1440.0"], progress=False)
    assert result.counts == {"done": 2}
    table = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert table["slurm_job_id"].notna().all()  # each member ran inside a SLURM job
    assert len(list((tmp_path / "logs").glob("tme-*.err"))) == 2  # two jobs were submitted
    serial = run_batch(path, executor=ExecutorSpec("serial"), out_dir=tmp_path / "serial",
                       overrides=["time.duration_min=1440.0"], progress=False)
    assert serial.counts == {"done": 2}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "serial" / "summary.parquet")[READOUTS],
                                  table[READOUTS])


def test_a_gpu_worker_is_bound_to_the_gpu_at_its_index(monkeypatch):
    from abm.adapters.dask_runner import _bind_devices

    for name, expected in (("tme-7-1", "5"), ("tme-7-0", "4"), (3, "5")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
        _bind_devices(name)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    _bind_devices("tme-0-1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_the_bundled_sweep_runs_cut_down(tmp_path):
    sweep, base, _ = load_sweep(ROOT / "configs" / "sweeps" / "immune_recruitment.toml")
    assert base == QUICKSTART and len(Design(sweep, sweep.seed)) == 8
    out = tmp_path / "bundled"
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    sets = [item for o in [*overrides, "time.duration_min=720.0"] for item in ("--set", o)]
    code = main(["batch", str(ROOT / "configs" / "sweeps" / "immune_recruitment.toml"), "--out", str(out),
                 "--workers", "1", "--quiet", *sets])
    assert code == 0
    table = pd.read_parquet(out / "summary.parquet")
    assert len(table) == 8 and set(table["status"]) == {"done"}
    assert (table["end_time_min"] == 720).all()


def test_executor_flags_reach_the_spec():
    from abm.cli import _batch_executor, build_parser

    path = ROOT / "configs" / "sweeps" / "immune_recruitment.toml"
    parse = build_parser().parse_args
    assert _batch_executor(parse(["batch", str(path)]), path) == ExecutorSpec("local", workers=2)
    assert _batch_executor(parse(["batch", str(path), "--workers", "3"]), path).workers == 3
    spec = _batch_executor(parse(["batch", str(path), "--dask-local", "2"]), path)
    assert (spec.kind, spec.dask_local) == ("dask", 2)
    spec = _batch_executor(parse(["batch", str(path), "--slurm", "--account", "a", "--partition", "p",
                                  "--gpus-per-job", "1", "--walltime", "00:10:00", "--jobs", "3"]), path)
    assert spec.kind == "slurm" and spec.slurm == SlurmSpec(account="a", partition="p", gpus_per_job=1,
                                                           walltime="00:10:00", jobs=3)


def test_config_errors_name_the_sweep_file(tmp_path):
    path = write_sweep(tmp_path, '[sample]\nmethod = "lhs"\nn = 4\n[sample.ranges]\n"a.b" = {low = 2, high = 1}')
    with pytest.raises(ConfigError, match=r"sample\.ranges\.a\.b.*high \(1\) must be greater than low \(2\)"):
        load_sweep(path)


def test_output_snapshots_choose_the_written_steps():
    from abm.config import OutputConfig
    from abm.runner import SnapshotPlan

    interval = SnapshotPlan.of(OutputConfig(snapshot_interval_min=60.0), dt_min=30.0)
    assert interval.at_start(0) and [s for s in range(1, 7) if interval.at_step(s)] == [2, 4, 6]
    assert interval.at_end(False)
    final = SnapshotPlan.of(OutputConfig(snapshots="final"), dt_min=30.0)
    assert not final.at_start(0) and not any(final.at_step(s) for s in range(1, 100)) and final.at_end(False)
    none = SnapshotPlan.of(OutputConfig(snapshots="none"), dt_min=30.0)
    assert not (none.at_start(0) or none.at_step(2) or none.at_end(False) or none.at_end(True))
    times = SnapshotPlan.of(OutputConfig(snapshots=[0.0, 100.0, 1440.0]), dt_min=30.0)
    assert times.at_start(0) and [s for s in range(1, 60) if times.at_step(s)] == [3, 48]
    assert not times.at_end(False) and times.at_end(True)  # Ctrl-C still leaves the state it stopped at
    with pytest.raises(ValueError, match="snapshots"):
        OutputConfig(snapshots="daily")
