"""Running a virtual trial: each patient's untreated phase once, then every arm as a branch of it.

One task is one patient: its untreated phase (``patients/<pid>/pre/sim.h5``) up to treatment start, then each
arm replayed from the last snapshot of that file with the arm's therapy tables (:func:`abm.replay.replay_run`,
``patients/<pid>/<arm>/sim.h5``). The arms of a patient therefore start from the same tumour, bit for bit, and
the untreated phase is simulated once whatever the number of arms. A patient is the task (rather than the
untreated phase and each arm separately) because its arms need its untreated phase first: a task per patient
keeps that order inside the task, needs no dependency between tasks in any executor (local pool, Dask, SLURM),
and with at least as many patients as workers keeps every worker busy all the same.

A run already finished with the same resolved config is not run again, so re-running a trial (after Ctrl-C, a
failure or with more patients) runs only what is missing. A patient whose task fails is recorded (in the table,
the report and ``patients/<pid>/error.txt``) and never stops the others.

The readouts are read back from the files once every task is done (:func:`arm_readouts`), so the table always
describes the files on disk.
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abm.analysis import best_response, first_progression_min, recist_categories
from abm.cohort.trial_spec import Trial

__all__ = ["ArmTask", "PatientTask", "TrialResult", "arm_readouts", "plan_trial", "run_patient", "run_trial"]

log = logging.getLogger("tme")

_TIME_TOL_MIN = 1e-6
_READOUT_COLUMNS = ("baseline_diameter_um", "baseline_tumour_cells", "final_diameter_um", "final_tumour_cells",
                    "best_pct_change", "final_pct_change", "best_response", "responder", "disease_control",
                    "pfs_days", "pfs_event", "follow_up_days", "assessments")


@dataclass(frozen=True)
class ArmTask:
    """One arm of one patient to run: its name, output directory and therapy file (``None``: untreated)."""

    name: str
    out_dir: str
    therapy_file: str | None


@dataclass(frozen=True)
class PatientTask:
    """What :func:`run_patient` does for one patient (picklable, for any executor).

    ``pre_config_toml`` is the resolved config of the untreated phase, ``None`` where that run is already
    finished (TOML text: a config object does not pickle); ``arms`` are the arms still to run. ``start_min``
    and ``end_min`` are treatment start and the end of follow-up (min).
    """

    pid: str
    pre_dir: str
    pre_config_toml: str | None
    arms: tuple[ArmTask, ...]
    start_min: float
    end_min: float


def run_patient(task: PatientTask) -> dict:
    """Run a patient's untreated phase (if needed), then each of its arms from treatment start.

    Runs in a worker; an exception (or a run stopped by Ctrl-C, :class:`abm.runner.RunInterrupted`) ends the
    patient's task and is reported by the executor.

    Returns
    -------
    dict
        ``ran`` (the runs made: ``"pre"`` and arm names), ``wall_s`` and ``cpu_s`` (seconds of wall-clock and of
        this process's CPU time: on a shared machine the second says what the work costs).
    """
    from abm.config import parse_config
    from abm.replay import replay_run
    from abm.runner import run_simulation

    t0, c0 = time.perf_counter(), time.process_time()
    ran = []
    pre_dir = Path(task.pre_dir)
    if task.pre_config_toml is not None:
        config = parse_config(tomllib.loads(task.pre_config_toml), f"patient {task.pid}")
        run_simulation(config, pre_dir, overwrite=True, progress=False)
        ran.append("pre")
    for arm in task.arms:
        replay_run(pre_dir / "sim.h5", task.start_min, overrides=[f"time.duration_min={task.end_min!r}"],
                   out_dir=arm.out_dir, overwrite=True, progress=False, therapy_file=arm.therapy_file)
        ran.append(arm.name)
    return {"ran": ran, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


# --------------------------------------------------------------------------------------------------------------
# What is done, what is left
def _finished(h5: Path, expected_toml: str | None = None) -> dict | None:
    """The root attributes of a run file that ran to its end (with ``expected_toml`` as its config); else None."""
    from abm.io.reader import RunFileError
    from abm.io.run import open_run

    if not h5.exists():
        return None
    try:
        with open_run(h5) as run:
            if not run.complete or run.attrs.get("end_reason") != "finished":
                return None
            if expected_toml is not None and run.config_toml != expected_toml:
                return None
            return run.attrs
    except RunFileError:
        return None


def arm_config_toml(trial: Trial, arm: str, pre_attrs: dict) -> str:
    """The resolved config an arm's run has, given the root attributes of the patient's untreated run."""
    from abm.config import config_to_toml
    from abm.replay import branch_config

    parent = tomllib.loads(str(pre_attrs["config_toml"]))
    config = branch_config(parent, pre_attrs.get("backend"), [f"time.duration_min={trial.end_min!r}"],
                           trial.arms[arm].tables, f"arm {arm}", pre_attrs.get("random"))
    return config_to_toml(config)


def write_arm_files(trial: Trial, out_dir: Path) -> dict[str, Path | None]:
    """``arms/<arm>.toml``: each treated arm's therapy tables on the run's clock (the file replay reads)."""
    import tomli_w

    files: dict[str, Path | None] = {}
    (out_dir / "arms").mkdir(parents=True, exist_ok=True)
    for name, arm in trial.arms.items():
        if arm.tables is None:
            files[name] = None
            continue
        path = out_dir / "arms" / f"{name}.toml"
        head = (f"# Arm '{name}' of trial '{trial.spec.name}' ({arm.label}): dose times in days from t = 0 of the "
                f"run;\n# treatment starts on day {trial.spec.treatment_start_day:g}.\n")
        text = head + tomli_w.dumps(arm.tables)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        files[name] = path
    return files


def plan_trial(trial: Trial, out_dir: Path, arm_files: dict) -> tuple[list[tuple[str, PatientTask]], int]:
    """The tasks still to run (patients with a run missing) and the number of runs they hold."""
    from abm.config import config_to_toml

    tasks, n_runs = [], 0
    for patient in trial.patients:
        pdir = out_dir / "patients" / patient.pid
        pre_toml = config_to_toml(trial.pre_config(patient))
        pre_attrs = _finished(pdir / "pre" / "sim.h5", pre_toml)
        arms = []
        for name in trial.arms:
            arm_h5 = pdir / name / "sim.h5"
            if pre_attrs is None or _finished(arm_h5, arm_config_toml(trial, name, pre_attrs)) is None:
                therapy = arm_files[name]
                arms.append(ArmTask(name, str(pdir / name), None if therapy is None else str(therapy)))
        if pre_attrs is not None and not arms:
            continue
        tasks.append((patient.pid, PatientTask(pid=patient.pid, pre_dir=str(pdir / "pre"),
                                               pre_config_toml=None if pre_attrs is not None else pre_toml,
                                               arms=tuple(arms), start_min=trial.treatment_start_min,
                                               end_min=trial.end_min)))
        n_runs += len(arms) + (pre_attrs is None)
    return tasks, n_runs


# --------------------------------------------------------------------------------------------------------------
# Readouts
def _at(t: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``values`` interpolated at ``times`` over its finite points (NaN where it has none)."""
    ok = np.isfinite(values)
    if not ok.any():
        return np.full(np.shape(times), np.nan)
    return np.interp(times, t[ok], values[ok])


def arm_readouts(h5: Path, trial: Trial) -> tuple[dict, dict]:
    """RECIST readouts of one arm's run file, from its time series at the trial's assessment times.

    The burden is ``tumour_diameter_um``, the diameter of the circle (2-D) or sphere (3-D) of the lesion's
    volume (live and necrotic voxels): a lattice lesion has no longest diameter to sum. The baseline is the
    first assessment, at treatment start.

    Returns
    -------
    (dict, dict)
        The table row (``baseline_diameter_um``, ``baseline_tumour_cells``, ``best_pct_change``,
        ``final_pct_change``, ``best_response``, ``pfs_days``, ``pfs_event``, ...) and the series for the plots:
        ``days`` and ``pct_change`` every time-series row from treatment start, ``assess_days`` and
        ``assess_pct`` at the assessments.
    """
    from abm.compare import load_run_series

    spec = trial.spec
    run = load_run_series(h5)
    t = run.t_min
    d = np.asarray(run.ts.get("tumour_diameter_um", np.full(t.shape, np.nan)), dtype=np.float64)
    cells = np.asarray(run.ts.get("tumour_cells", np.full(t.shape, np.nan)), dtype=np.float64)
    times = trial.assessment_times_min()
    times = times[times <= t[-1] + _TIME_TOL_MIN]
    d_at, cells_at = _at(t, d, times), _at(t, cells, times)
    baseline = float(d_at[0]) if times.size else float("nan")
    ok = np.isfinite(baseline) and baseline > 0
    pct = 100.0 * (d_at / baseline - 1.0) if ok else np.full(times.shape, np.nan)
    response = best_response(times, d_at, cells_at, spec.sd_min_days, spec.pd_min_increase_um)
    progressed = first_progression_min(times, d_at, cells_at, spec.pd_min_increase_um)
    start = trial.treatment_start_min
    last = float(times[-1]) if times.size else start
    categories = recist_categories(d_at, spec.pd_min_increase_um) if ok else np.array([], dtype="<U2")
    row = {
        "baseline_diameter_um": baseline,
        "baseline_tumour_cells": float(cells_at[0]) if times.size else float("nan"),
        "final_diameter_um": float(d_at[-1]) if times.size else float("nan"),
        "final_tumour_cells": float(cells_at[-1]) if times.size else float("nan"),
        "best_pct_change": float(np.nanmin(pct[1:])) if ok and times.size > 1 else float("nan"),
        "final_pct_change": float(pct[-1]) if ok else float("nan"),
        "best_response": response,
        "responder": response in ("CR", "PR"),
        "disease_control": response in ("CR", "PR", "SD"),
        "pfs_days": ((progressed if progressed is not None else last) - start) / 1440.0,
        "pfs_event": progressed is not None,
        "follow_up_days": (last - start) / 1440.0,
        "assessments": ",".join(categories[1:].tolist()),
    }
    after = t >= start - _TIME_TOL_MIN
    series = {"days": (t[after] - start) / 1440.0,
              "pct_change": 100.0 * (d[after] / baseline - 1.0) if ok else np.full(int(after.sum()), np.nan),
              "assess_days": (times - start) / 1440.0, "assess_pct": pct, "best_response": response}
    return row, series


# --------------------------------------------------------------------------------------------------------------
# The trial
@dataclass
class TrialResult:
    """What :func:`run_trial` did and found.

    Attributes
    ----------
    out_dir : Path
        The trial's directory.
    table : pandas.DataFrame
        One row per patient and arm (``results.parquet`` / ``results.csv``).
    ran : int
        Runs this call set out to make (untreated phases and arms; those of a failed patient included); 0 when
        everything was already finished.
    failures : dict of str to str
        Patients whose task failed in this call, with the error.
    tasks : dict of str to dict
        What each patient task that ran in this call returned (:func:`run_patient`).
    report : Path or None
        ``report.html``.
    summary : dict
        Per-arm statistics and the comparisons (``summary.json``).
    wall_s : float
        Seconds this call took.
    """

    out_dir: Path
    table: object
    ran: int
    failures: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    report: Path | None = None
    summary: dict = field(default_factory=dict)
    wall_s: float = 0.0


def _write_inputs(trial: Trial, out_dir: Path) -> None:
    """``trial.resolved.toml`` (the validated trial file) and ``patients.csv`` (seeds and sampled values)."""
    import csv

    import tomli_w

    from abm.config import _drop_none

    spec = _drop_none(trial.spec.model_dump(mode="json"))
    (out_dir / "trial.resolved.toml").write_text(tomli_w.dumps(spec), encoding="utf-8")
    keys = list(trial.spec.parameters)
    with open(out_dir / "patients.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient", "seed", *keys])
        for p in trial.patients:
            writer.writerow([p.pid, p.seed, *[repr(p.parameters[k]) for k in keys]])


def run_trial(trial: Trial, out_dir, executor=None, progress: bool = True) -> TrialResult:
    """Run (or finish) a trial and write its table, summary and report.

    Parameters
    ----------
    trial : Trial
        From :func:`abm.cohort.trial_spec.load_trial`.
    out_dir : path-like
        The trial's directory (``runs/<name>`` by default in the CLI).
    executor : abm.cohort.executors.ExecutorSpec, optional
        Where the patients run; default this process, one after the other.
    progress : bool
        Show a progress bar over the patients.

    Returns
    -------
    TrialResult

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C, once the running patients have stopped; finished runs are kept and a re-run continues.
    """
    from abm.cohort.executors import ExecutorSpec, TaskFailure, run_tasks
    from abm.cohort.trial_report import write_outputs

    t_wall = time.perf_counter()
    executor = executor or ExecutorSpec(kind="serial")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_inputs(trial, out_dir)
    arm_files = write_arm_files(trial, out_dir)
    tasks, n_runs = plan_trial(trial, out_dir, arm_files)
    n_total = len(trial.patients) * (1 + len(trial.arms))
    log.info("trial '%s': %d patients x %d arms; %d of %d runs to do, %d patient task(s) on %s", trial.spec.name,
             len(trial.patients), len(trial.arms), n_runs, n_total, len(tasks), executor.describe())
    failures: dict[str, str] = {}
    done: dict[str, dict] = {}
    for pid, result in run_tasks(run_patient, tasks, executor, desc="patients", progress=progress):
        error = out_dir / "patients" / pid / "error.txt"
        if isinstance(result, TaskFailure):
            failures[pid] = str(result)
            if result.error_type != "RunInterrupted":
                error.parent.mkdir(parents=True, exist_ok=True)
                error.write_text(result.traceback or str(result), encoding="utf-8")
                log.error("patient %s failed: %s", pid, result)
        else:
            done[pid] = result
            if error.exists():
                error.unlink()
    table, series = collect_table(trial, out_dir)
    result = TrialResult(out_dir=out_dir, table=table, ran=n_runs, failures=failures, tasks=done)
    result.summary, result.report = write_outputs(trial, out_dir, table, series)
    result.wall_s = time.perf_counter() - t_wall
    return result


def collect_table(trial: Trial, out_dir: Path):
    """The per-patient-arm table read from the run files, and the plot series per ``(pid, arm)``."""
    import pandas as pd

    from abm.config import config_to_toml

    rows, series = [], {}
    for patient in trial.patients:
        pdir = out_dir / "patients" / patient.pid
        pre_attrs = _finished(pdir / "pre" / "sim.h5", config_to_toml(trial.pre_config(patient)))
        error = pdir / "error.txt"
        message = error.read_text(encoding="utf-8").strip().splitlines()[-1] if error.exists() else ""
        for name, arm in trial.arms.items():
            h5 = pdir / name / "sim.h5"
            row = {"patient": patient.pid, "arm": name, "arm_label": arm.label, "seed": patient.seed,
                   **patient.parameters, "file": str(h5)}
            done = pre_attrs is not None and _finished(h5, arm_config_toml(trial, name, pre_attrs)) is not None
            if done:
                values, series[(patient.pid, name)] = arm_readouts(h5, trial)
                row.update(status="ok", error="", **values)
            else:
                row.update(status="failed" if message else "not run", error=message)
            rows.append(row)
    table = pd.DataFrame(rows)
    missing = [c for c in _READOUT_COLUMNS if c not in table]
    return table.assign(**{c: np.nan for c in missing}) if len(table) else table, series
