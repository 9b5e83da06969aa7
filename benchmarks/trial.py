"""Wall time of a virtual trial, and what forking the arms at treatment start saves, written as a JSON report.

    python benchmarks/trial.py [--trial configs/trials/excluded_tgfb.toml] [--patients 20] [--workers 2]
                               [--fork-patients 2] [--out benchmarks/results/trial.json]

Measures (sizes are named once, in SIZES, and replaced by the flags):
- the wall time of the whole trial (``tme trial``: every patient's untreated phase, then each arm branched from
  it) on a local pool of ``workers`` processes, from an empty directory;
- the CPU time of the patients' tasks, whose sum over the workers estimates the wall time on an unshared machine;
- on ``fork_patients`` patients, one process, in CPU time: the forked design (the untreated phase once, then each
  arm from treatment start) against every arm run from day 0 on its own (the untreated phase repeated per arm),
  and the saving ``1 - forked / from_day_0``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abm.cohort.executors import ExecutorSpec  # noqa: E402
from abm.cohort.trial import run_trial  # noqa: E402
from abm.cohort.trial_spec import load_trial  # noqa: E402
from abm.config import config_to_toml  # noqa: E402
from abm.replay import branch_config, replay_run  # noqa: E402
from abm.runner import run_simulation  # noqa: E402

SIZES = {"trial": "configs/trials/excluded_tgfb.toml", "patients": 20, "workers": 2, "fork_patients": 2}


def bench_trial(path: str, patients: int, workers: int) -> dict:
    """The whole trial from an empty directory on a local pool."""
    trial = load_trial(REPO / path, patients=patients)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = run_trial(trial, Path(tmp) / "trial", ExecutorSpec(kind="local", workers=workers), progress=True)
        wall = time.perf_counter() - t
    dt_min = trial.pre_config(trial.patients[0]).time.dt_min
    cpu = sum(t["cpu_s"] for t in result.tasks.values())
    return {"patients": patients, "arms": len(trial.arms), "workers": workers, "runs": result.ran,
            "wall_s": round(wall, 2), "worker_s_per_patient": round(wall * workers / patients, 2),
            # The patients' CPU time: on a shared machine, cpu_s / workers is the wall time the trial takes alone.
            "cpu_s": round(cpu, 1), "cpu_s_per_patient": round(cpu / max(len(result.tasks), 1), 2),
            "wall_s_unshared_estimate": round(cpu / workers, 1),
            "steps_untreated": round(trial.treatment_start_min / dt_min),
            "steps_per_arm": round((trial.end_min - trial.treatment_start_min) / dt_min),
            "failed_patients": sorted(result.failures),
            "orr": {name: a["orr"] for name, a in result.summary["arms"].items()}}


def bench_fork(path: str, n: int) -> dict:
    """Forked arms against every arm from day 0, on the first ``n`` patients, one process."""
    trial = load_trial(REPO / path, patients=n)
    # CPU time of this process: on a shared machine it measures the work, where the wall clock measures the load.
    forked = from_day_0 = pre_total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arm_files = {}
        for name, arm in trial.arms.items():
            if arm.tables is not None:
                arm_files[name] = root / f"{name}.toml"
                arm_files[name].write_text(tomli_w.dumps(arm.tables), encoding="utf-8")
        for patient in trial.patients:
            pre_config = trial.pre_config(patient)
            t = time.process_time()
            pre = run_simulation(pre_config, root / patient.pid / "pre", progress=False)
            pre_s = time.process_time() - t
            pre_total += pre_s
            forked += pre_s
            for name, arm in trial.arms.items():
                t = time.process_time()
                replay_run(pre.h5_path, trial.treatment_start_min, out_dir=root / patient.pid / name,
                           overrides=[f"time.duration_min={trial.end_min!r}"], progress=False,
                           therapy_file=arm_files.get(name))
                forked += time.process_time() - t
                data = tomllib.loads(config_to_toml(pre_config))
                full = branch_config(copy.deepcopy(data), None, [f"time.duration_min={trial.end_min!r}"],
                                     arm.tables, "from day 0")
                t = time.process_time()
                run_simulation(full, root / patient.pid / f"{name}_day0", progress=False)
                from_day_0 += time.process_time() - t
    return {"patients": n, "arms": len(trial.arms), "forked_cpu_s": round(forked, 2),
            "from_day_0_cpu_s": round(from_day_0, 2), "untreated_phase_cpu_s": round(pre_total, 2),
            "saving_fraction": round(1.0 - forked / from_day_0, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trial", default=SIZES["trial"])
    p.add_argument("--patients", type=int, default=SIZES["patients"])
    p.add_argument("--workers", type=int, default=SIZES["workers"])
    p.add_argument("--fork-patients", type=int, default=SIZES["fork_patients"])
    p.add_argument("--skip-trial", action="store_true", help="measure only the fork saving")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "trial.json"))
    args = p.parse_args()
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count()},
              "trial_file": args.trial}
    if not args.skip_trial:
        report["trial"] = bench_trial(args.trial, args.patients, args.workers)
        print(json.dumps(report["trial"], indent=2))
    if args.fork_patients > 0:
        report["fork"] = bench_fork(args.trial, args.fork_patients)
        print(json.dumps(report["fork"], indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
