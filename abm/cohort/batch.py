"""``tme batch``: run every member of a sweep, resumably, into ``runs/<batch>/`` (docs/BATCH.md).

Layout of the batch directory::

    sweep.toml            copy of the sweep file the batch was last run from
    journal.jsonl         one JSON line per member attempt, appended as each finishes (the source of the tables)
    summary.parquet/.csv  one row per member: id, varied parameters, seed, status, error, wall time, readouts
    m0000/                one member: sim.h5, config.resolved.toml, run.log (error.txt when it failed)

Every member's config is validated before anything runs: a key or value the schema refuses is a user error of
the whole batch. A member that fails while it runs (a value only the model refuses, a crash) is recorded as
``failed`` and the others go on. A member counts as finished when its ``sim.h5`` is complete, ended as
``finished`` and holds the same resolved config (``config_toml``) the member has now; a re-run skips those and
runs the rest, so a batch stopped by Ctrl-C (its running members end ``interrupted`` with a final snapshot)
resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
import tomllib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abm.cohort.executors import ExecutorSpec, TaskFailure, run_tasks
from abm.cohort.sweep import Design, Member, format_value, load_sweep, member_config
from abm.config import ConfigError, config_to_toml, parse_config

__all__ = [
    "BatchInterrupted",
    "BatchResult",
    "MemberTask",
    "final_readouts",
    "member_finished",
    "run_batch",
    "run_member",
]

JOURNAL = "journal.jsonl"
SUMMARY_KINDS = ("count", "level", "ratio", "code")  # per-step events are left out of the final-state summary
STATUSES = ("done", "failed", "interrupted", "pending")
_MAX_LISTED = 10


class BatchInterrupted(Exception):
    """The batch was stopped by Ctrl-C; the tables hold every member recorded so far."""

    def __init__(self, result: BatchResult):
        self.result = result
        super().__init__(f"batch interrupted; {result.counts_text()}; run the same command again to resume")


@dataclass
class BatchResult:
    """What a batch run did."""

    out_dir: Path
    n_members: int
    ran: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    tables: list[Path] = field(default_factory=list)

    def counts_text(self) -> str:
        """``'3 done, 1 failed'``: the members' statuses in the summary."""
        return ", ".join(f"{self.counts[s]} {s}" for s in STATUSES if self.counts.get(s))


@dataclass(frozen=True)
class MemberTask:
    """What a worker needs to run one member: its resolved config and its directory."""

    member: str
    config_toml: str
    out_dir: str


def run_member(task: MemberTask) -> dict:
    """Run one member into ``task.out_dir`` (runs in a worker; module-level so it pickles).

    Returns
    -------
    dict
        ``status`` (``done`` or ``failed``), ``error`` (message or None), ``wall_s`` (s), ``end_time_min``,
        ``slurm_job_id`` (the SLURM job that ran it, or None) and ``readouts`` (final values of the declared
        count, level, ratio and code readouts).

    Raises
    ------
    abm.runner.RunInterrupted
        When Ctrl-C or SIGTERM stopped the run (after its final snapshot), so the executor stops the batch.
    """
    from abm.runner import RunInterrupted, run_simulation

    out_dir = Path(task.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        config = parse_config(tomllib.loads(task.config_toml), f"member {task.member}")
        result = run_simulation(config, out_dir, overwrite=True, progress=False)
        return {"status": "done", "error": None, "wall_s": time.perf_counter() - t0,
                "end_time_min": result.time_min, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "readouts": final_readouts(result.h5_path)}
    except RunInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 (a member that fails is recorded; the batch goes on)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            (out_dir / "error.txt").write_text(text, encoding="utf-8")
        except OSError:
            pass
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - t0,
                "end_time_min": None, "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "readouts": {}}


def final_readouts(h5_path) -> dict[str, float]:
    """The last time-series value of every declared count, level, ratio and code readout of a run file."""
    from abm.io import open_run

    with open_run(h5_path) as run:
        kinds = run.timeseries_kinds()
        group = run.h5["timeseries"]
        return {name: float(group[name][-1]) for name, kind in kinds.items()
                if kind in SUMMARY_KINDS and name != "time_min" and name in group and group[name].shape[0]}


def member_finished(h5_path: Path, config_toml: str) -> bool:
    """Whether ``h5_path`` is a complete, finished run of exactly ``config_toml``."""
    from abm.io import open_run
    from abm.io.reader import RunFileError

    if not h5_path.is_file():
        return False
    try:
        with open_run(h5_path) as run:
            return (run.complete and run.attrs.get("end_reason") == "finished"
                    and run.config_toml == config_toml)
    except (RunFileError, OSError, KeyError):
        return False


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Journal:
    """``journal.jsonl``: one line per member attempt, flushed as it is written."""

    def __init__(self, path: Path):
        self.path = path

    def latest(self) -> dict[str, dict]:
        """The last record of each member (a line cut short by a killed process is ignored)."""
        records: dict[str, dict] = {}
        if not self.path.is_file():
            return records
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "member" in rec:
                    records[rec["member"]] = rec
        return records

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
            fh.flush()


def _record(member: Member, sha: str, outcome: dict) -> dict:
    return {
        "member": member.id, "point": member.point, "replicate": member.replicate, "seed": member.seed,
        "params": {k: _jsonable(v) for k, v in member.params.items()},
        "status": outcome["status"], "error": outcome.get("error"), "wall_s": outcome.get("wall_s"),
        "end_time_min": outcome.get("end_time_min"), "slurm_job_id": outcome.get("slurm_job_id"),
        "readouts": outcome.get("readouts", {}),
        "config_sha256": sha, "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) else format_value(value)


def _outcome(result: Any) -> dict:
    if isinstance(result, TaskFailure):
        status = "interrupted" if result.interrupted else "failed"
        return {"status": status, "error": str(result)}
    return result


@dataclass
class _Plan:
    """The members of a batch, checked: which need running."""

    design: Design
    base_data: dict
    source: str
    todo: set[str]

    def tasks(self, out_dir: Path, inflight: dict) -> Iterator[tuple[str, MemberTask]]:
        for member in self.design:
            if member.id not in self.todo:
                continue
            text = config_to_toml(member_config(self.base_data, member.overrides(self.design.sweep.set),
                                                self.source))
            inflight[member.id] = (member, _sha(text))
            yield member.id, MemberTask(member.id, text, str(out_dir / member.id))


def _check_members(design: Design, base_data: dict, source: str, out_dir: Path,
                   journal: _Journal) -> tuple[set[str], dict[str, str]]:
    """Validate every member's config and record finished ones missing from the journal.

    Returns the members to run and every member's config digest (SHA-256 of its resolved TOML).

    Raises
    ------
    ConfigError
        Listing the first members whose config the schema refuses.
    """
    problems, todo, shas, n_bad = [], set(), {}, 0
    latest = journal.latest()
    fixed = design.sweep.set
    for member in design:
        overrides = member.overrides(fixed)
        try:
            config = member_config(base_data, overrides, source)
        except ConfigError as exc:
            n_bad += 1
            if n_bad <= _MAX_LISTED:
                varied = ", ".join(f"{k}={format_value(v)}" for k, v in member.params.items()) or "no varied keys"
                problems.extend(f"member {member.id} ({varied}): {p}" for p in exc.problems)
            continue
        text = config_to_toml(config)
        sha = shas[member.id] = _sha(text)
        if member_finished(out_dir / member.id / "sim.h5", text):
            rec = latest.get(member.id)
            if rec is None or rec.get("status") != "done" or rec.get("config_sha256") != sha:
                readouts = final_readouts(out_dir / member.id / "sim.h5")
                journal.append(_record(member, sha, {"status": "done", "error": None, "wall_s": None,
                                                     "end_time_min": config.time.duration_min,
                                                     "readouts": readouts}))
        else:
            todo.add(member.id)
    if problems:
        if n_bad > _MAX_LISTED:
            problems.append(f"... and {n_bad - _MAX_LISTED} more member(s) with problems")
        raise ConfigError(problems, source)
    return todo, shas


def write_tables(out_dir: Path, design: Design, shas: dict[str, str]) -> tuple[list[Path], dict[str, int]]:
    """Build ``summary.parquet`` and ``summary.csv`` from the journal: one row per member of ``design``.

    A member's row is its latest journal record made with its present config (digest in ``shas``); members
    without one are ``pending``. Returns the paths written and the count of each status.
    """
    import pandas as pd

    latest = _Journal(out_dir / JOURNAL).latest()
    rows, counts = [], {}
    for member in design:
        rec = latest.get(member.id)
        if rec is not None and rec.get("config_sha256") != shas[member.id]:
            rec = None
        row = {"member": member.id, "point": member.point, "replicate": member.replicate, "seed": member.seed}
        row.update({k: _jsonable(v) for k, v in member.params.items()})
        row["status"] = rec["status"] if rec else "pending"
        row["error"] = rec.get("error") if rec else None
        row["wall_s"] = rec.get("wall_s") if rec else None
        row["end_time_min"] = rec.get("end_time_min") if rec else None
        row["slurm_job_id"] = rec.get("slurm_job_id") if rec else None
        row.update((rec or {}).get("readouts", {}))
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("wall_s", "end_time_min"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    paths = [out_dir / "summary.parquet", out_dir / "summary.csv"]
    for path, write in zip(paths, (frame.to_parquet, frame.to_csv)):
        partial = path.with_name(path.name + ".partial")  # replaced in one step: never a half-written table
        write(partial, index=False)
        os.replace(partial, path)
    return paths, counts


def _root_seed(sweep, base_data: dict, source: str) -> int:
    if sweep.seed is not None:
        return sweep.seed
    return parse_config(dict(base_data), source).seed


def run_batch(sweep_path, *, executor: ExecutorSpec | None = None, out_dir=None, overrides: list[str] | None = None,
              progress: bool = True) -> BatchResult:
    """Run (or resume) the batch of a sweep file.

    Parameters
    ----------
    sweep_path : path-like
        The sweep file (TOML).
    executor : ExecutorSpec, optional
        Where to run the members; default the sweep's ``[executor]`` table.
    out_dir : path-like, optional
        Batch directory; default the sweep's ``out``, else ``runs/<name>``.
    overrides : list of str, optional
        ``key=value`` items (TOML values, as ``tme run --set``) added to the sweep's ``[set]`` for every member.
    progress : bool
        Show a progress bar over the members.

    Returns
    -------
    BatchResult

    Raises
    ------
    abm.config.ConfigError
        If the sweep file, its base config or any member's config is invalid (nothing is run).
    BatchInterrupted
        After Ctrl-C, once the running members have stopped and the tables are written.
    """
    t0 = time.perf_counter()
    sweep_path = Path(sweep_path)
    sweep, base_path, base_data = load_sweep(sweep_path, overrides)
    source = f"{sweep_path} (base {base_path})"
    spec = executor or sweep.executor.spec()
    name = sweep.name or sweep_path.stem
    out_dir = Path(out_dir or sweep.out or Path("runs") / name)
    design = Design(sweep, _root_seed(sweep, base_data, source))
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = _Journal(out_dir / JOURNAL)
    todo, shas = _check_members(design, base_data, source, out_dir, journal)
    shutil.copyfile(sweep_path, out_dir / "sweep.toml")
    result = BatchResult(out_dir, len(design), skipped=len(design) - len(todo))
    plan = _Plan(design, base_data, source, todo)
    inflight: dict[str, tuple[Member, str]] = {}
    interrupted = False
    try:
        for key, outcome in run_tasks(run_member, plan.tasks(out_dir, inflight), spec, desc="members",
                                      progress=progress, total=len(todo)):
            member, sha = inflight.pop(key)
            journal.append(_record(member, sha, _outcome(outcome)))
            result.ran += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        result.tables, result.counts = write_tables(out_dir, design, shas)
        result.wall_s = time.perf_counter() - t0
    if interrupted:
        raise BatchInterrupted(result)
    return result


def describe_batch(result: BatchResult) -> str:
    """Lines for the terminal after a batch."""
    rate = f" ({result.wall_s / result.ran:.1f} s per member run)" if result.ran else ""
    text = (f"batch {result.out_dir}: {result.n_members} members ({result.counts_text()}); ran {result.ran}, "
            f"skipped {result.skipped} already finished, {result.wall_s:.1f} s wall{rate}\n"
            f"summary: {', '.join(str(p) for p in result.tables)}")
    if result.counts.get("failed"):
        text += ("\nfailed members: see the status and error columns of the summary and <member>/error.txt; "
                 "re-running the same command retries them")
    return text
