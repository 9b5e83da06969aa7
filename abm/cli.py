"""The ``tme`` command line.

User errors (bad config, unusable files, a taken output directory, a missing GPU, a disk that fills during a run)
print one clear message and exit with status 2, without a traceback. An interrupted run exits with 130 after
closing its file cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from abm import __version__

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def _overrides(args) -> list[str]:
    items = list(args.set or [])
    if getattr(args, "seed", None) is not None:
        items.append(f"seed={args.seed}")
    if getattr(args, "backend", None) is not None:
        items.append(f"backend={json.dumps(args.backend)}")
    return items


def _load(args):
    from abm.config import load_config

    return load_config(args.config, _overrides(args))


def _cmd_validate(args) -> int:
    config = _load(args)
    print(f"{args.config}: valid ({config.ndim}-D grid {config.grid.shape}, {config.n_steps} steps of "
          f"{config.time.dt_min:g} min, backend {config.backend})")
    return 0


def _use_device(args, backend: str | None) -> None:
    """``--device N``: make GPU N the current device before any array is made (backend cupy, or auto with a GPU)."""
    if args.device is None:
        return
    if backend == "numpy":
        raise UserError(f"--device {args.device} picks a GPU, but the backend is 'numpy'; use --backend cupy or auto")
    from abm.backend import select_device

    select_device(args.device)


def _cmd_run(args) -> int:
    from abm.runner import run_simulation

    config = _load(args)
    _use_device(args, config.backend)
    result = run_simulation(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    m = result.final
    print(f"output: {result.out_dir}/  (sim.h5, config.resolved.toml, run.log, summary.png)")
    print(
        f"t = {result.time_min / 1440:.2f} days in {result.steps} steps, {result.wall_s:.1f} s wall | "
        f"tumour cells {int(m.get('tumour_cells', 0))}, lesion diameter {m.get('tumour_diameter_um', 0):.0f} µm, "
        f"necrotic voxels {int(m.get('necrotic_voxels', 0))}, hypoxic fraction {m.get('hypoxic_fraction', 0):.2f}"
    )


def _cmd_inspect(args) -> int:
    from abm.io import open_run

    with open_run(args.file) as run:
        info = run.summary()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    grid = info["grid"]
    snaps = info["snapshots"]
    span = info["time_span_min"]
    print(f"{info['file']}")
    print(f"  format        {info['format']} v{info['format_version']}, written by tme-abm {info['software_version']}"
          f" on {info['created_utc']}")
    random = f", random {info['random']}" if info.get("random") else ""
    gpu = f" on {info['gpu_name']}" if info.get("gpu_name") else ""
    print(f"  run           '{info['name']}', backend {info['backend']}{gpu}{random}, seed {info['seed']}")
    print(f"  grid          {grid['ndim']}-D {' x '.join(map(str, grid['shape']))} voxels of {grid['spacing_um']:g} µm"
          f", dt {info['dt_min']} min")
    if span:
        print(f"  snapshots     {snaps['count']}, t = {snaps['times_min'][0]:g} .. {snaps['times_min'][-1]:g} min "
              f"(run reaches {span[1]:g} min = {span[1] / 1440:.2f} d; {info['timeseries_rows']} time-series rows)")
    else:
        print("  snapshots     none")
    print(f"  fields        {', '.join(info['fields']) or 'none'}")
    for which in ("first", "last"):
        counts = info["agents"].get(which, {})
        text = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
        print(f"  agents {which:<6} {text}")
    therapies = info["therapies"]
    print(f"  therapies     {', '.join(str(t.get('name', t)) for t in therapies) if therapies else 'none'}")
    status = "yes" if info["complete"] else "no (the writer did not close the file: killed or still running)"
    if info.get("end_reason") == "write_failed":
        status = "no (write_failed: writing stopped with an error; earlier snapshots are usable)"
    elif info["complete"] and info.get("end_reason"):
        status += f" ({info['end_reason']})"
    print(f"  complete      {status}")
    if "parent_file" in info:
        print(f"  branched from {info['parent_file']} at t = {info['branch_time_min']:g} min, "
              f"changes {info.get('branch_overrides', '[]')}")
    return 0


def _check_nesting(overrides: list[str]) -> None:
    """Refuse a --set value nested too deeply to parse before anything walks it (load_config does this itself)."""
    from abm.config import apply_overrides

    try:
        apply_overrides({}, overrides)
    except RecursionError:
        raise UserError("command line: a --set value is nested too deeply to read (arrays or tables inside each "
                        f"other beyond Python's recursion limit, {sys.getrecursionlimit()})") from None


def _time_min(text: str) -> float:
    """A time in minutes from ``'4320'``, ``'4320min'``, ``'72h'`` or ``'3d'``."""
    units = {"d": 1440.0, "h": 60.0, "min": 1.0, "m": 1.0}
    text = text.strip()
    for suffix in ("min", "d", "h", "m"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        return float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a time: give minutes or a number with d, h or min "
                                         "(e.g. 7d)") from None


def _cmd_replay(args) -> int:
    from abm.replay import replay_run

    overrides = list(args.set or [])
    if args.backend is not None:
        overrides.append(f"backend={json.dumps(args.backend)}")
    _check_nesting(overrides)
    _use_device(args, args.backend)
    result = replay_run(args.file, args.from_min, until_min=args.until, overrides=overrides, out_dir=args.out,
                        overwrite=args.overwrite, progress=not args.quiet, therapy_file=args.therapy_file)
    _print_summary(result)
    print(f"replayed from {args.file} at the snapshot at or before t = {args.from_min:g} min")
    return 0


def _cmd_plot(args) -> int:
    from pathlib import Path

    from abm.plots import plot_run

    out = Path(args.out) if args.out else Path(args.file).parent / "plots"
    result = plot_run(args.file, out, times=args.times, dpi=args.dpi)
    for path in result.written:
        print(f"wrote {path}")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def _cmd_movie(args) -> int:
    from abm.io.reader import RunFileError
    from abm.movie import export_movie, parse_axis, parse_size

    try:
        size = parse_size(args.size) if args.size else None
        axis = parse_axis(args.axis)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    layers = [n.strip() for item in args.layers or [] for n in item.split(",") if n.strip()] or None
    try:
        result = export_movie(args.file, args.output, layers=layers, start=args.start, end=args.end, fps=args.fps,
                              size=size, dpi=args.dpi, view="projection" if args.projection else "slice", axis=axis,
                              index=args.index, progress=not args.quiet)
    except RunFileError:
        raise
    except ValueError as exc:  # output format, fps, view
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        print("tme: movie cancelled; no file written", file=sys.stderr)
        return EXIT_INTERRUPTED
    w, h = result.size
    print(f"wrote {result.path}: {result.frames} frames of {w}x{h}, t = {result.times_min[0]:g}"
          f"-{result.times_min[1]:g} min")
    return 0


def _cmd_compare(args) -> int:
    from abm.compare import RECIST_SD_MIN_DAYS, compare_runs, format_table, parse_labels
    from abm.io.reader import RunFileError

    sd_min_days = RECIST_SD_MIN_DAYS if args.sd_min_days is None else args.sd_min_days
    try:
        labels = parse_labels(args.labels, len(args.files)) if args.labels is not None else None
        result = compare_runs(args.files, args.output, labels=labels, dpi=args.dpi, sd_min_days=sd_min_days)
    except RunFileError:
        raise
    except ValueError as exc:  # labels, dpi, runs sharing no time, output format
        raise UserError(str(exc)) from None
    for warning in result.warnings:
        print(f"tme: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(format_table(result))
    w, h = result.size_px
    print(f"wrote {result.figure} ({w}x{h})")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    for name, lacking in result.partial.items():
        print(f"panel {name}: no data for {', '.join(lacking)}")
    return 0


def _cmd_viz(args) -> int:
    from abm.adapters.viz.server import check_port, check_target, serve

    overrides = _overrides(args)
    _check_nesting(overrides)
    try:
        target = check_target(args.target, overrides)
        port = check_port(args.host, args.port)
    except ValueError as exc:  # --set on a run file, a port in use
        raise UserError(str(exc)) from None
    try:
        import abm.adapters.viz.app  # noqa: F401  (Solara and Mesa's visualisation, before the server starts)
    except ImportError as exc:
        raise UserError(f"tme viz needs Solara and Mesa's visualisation ({exc}); install them with "
                        "pip install 'tme-abm[viz]'") from None
    what = "replaying" if target.kind == "run" else "simulating"
    try:
        serve(target, args.host, port, open_browser=not args.no_browser,
              ready=lambda url: print(f"tme viz: {what} {target.path} at {url}  (Ctrl-C stops)", flush=True))
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signal
        pass
    print("tme viz: stopped", flush=True)
    sys.stderr.flush()
    # A page left playing runs its simulation in a worker thread that Python would wait for at exit; the server
    # has stopped and the view writes no files, so the process ends here.
    os._exit(0)


def _batch_executor(args, sweep_path):
    """The executor of ``tme batch``: the sweep's ``[executor]`` table with the command line's flags on top."""
    from abm.cohort.sweep import load_sweep

    spec = load_sweep(sweep_path)[0].executor.spec()
    try:
        return _executor_flags(args, spec)
    except ValueError as exc:  # ExecutorSpec refuses a count below 1
        raise UserError(str(exc)) from None


def _executor_flags(args, spec):
    import dataclasses

    from abm.cohort.executors import ExecutorSpec, SlurmSpec

    if args.slurm:
        slurm = spec.slurm or SlurmSpec()
        changes = {k: v for k, v in (("account", args.account), ("partition", args.partition),
                                     ("gpus_per_job", args.gpus_per_job), ("walltime", args.walltime),
                                     ("jobs", args.jobs)) if v is not None}
        return dataclasses.replace(spec, kind="slurm", slurm=dataclasses.replace(slurm, **changes))
    if args.scheduler or args.dask_local:
        return dataclasses.replace(spec, kind="dask", scheduler=args.scheduler, dask_local=args.dask_local)
    if args.workers is not None:
        return ExecutorSpec(kind="local", workers=args.workers)
    return spec


def _cmd_batch(args) -> int:
    try:
        import pandas  # noqa: F401  (the summary tables)
        import pyarrow  # noqa: F401  (summary.parquet)
    except ImportError as exc:
        raise UserError(f"tme batch needs pandas and pyarrow: pip install 'tme-abm[batch]' ({exc})") from None
    from abm.cohort.batch import BatchInterrupted, describe_batch, run_batch

    _check_nesting(list(args.set or []))
    executor = _batch_executor(args, args.sweep)
    try:
        result = run_batch(args.sweep, executor=executor, out_dir=args.out, overrides=list(args.set or []),
                           progress=not args.quiet)
    except BatchInterrupted as exc:
        print(f"tme: {exc}", file=sys.stderr)
        print(describe_batch(exc.result))
        return EXIT_INTERRUPTED
    print(describe_batch(result))
    return 1 if result.counts.get("failed") else 0


def _cmd_trial(args) -> int:
    from pathlib import Path

    try:
        import lifelines  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise UserError(f"tme trial needs pandas, pyarrow and lifelines ({exc}); install them with "
                        "pip install 'tme-abm[trial]'") from None
    from abm.cohort.trial import run_trial
    from abm.cohort.trial_report import format_summary
    from abm.cohort.trial_spec import load_trial

    overrides = list(args.set or [])
    _check_nesting(overrides)
    if args.patients is not None and args.patients < 1:
        raise UserError(f"--patients {args.patients}: expected at least 1")
    trial = load_trial(args.trial, overrides, patients=args.patients)
    try:
        executor = _executor_flags(args, trial.spec.executor.spec())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else Path("runs") / trial.spec.name
    try:
        result = run_trial(trial, out, executor, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"tme: trial stopped; finished runs in {out} are kept: run the same command again to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(result, trial))
    return 1 if result.failures else 0


def _cmd_calibrate(args) -> int:
    from pathlib import Path

    try:
        import pandas  # noqa: F401
        import pyabc  # noqa: F401
    except ImportError as exc:
        raise UserError(f"tme calibrate needs pyabc and pandas ({exc}); install them with "
                        "pip install 'tme-abm[calibration]'") from None
    from abm.calibration.engine import run_calibration
    from abm.calibration.spec import load_calibration

    overrides = list(args.set or [])
    _check_nesting(overrides)
    calibration = load_calibration(args.calibration, overrides)
    try:
        executor = _executor_flags(args, calibration.spec.executor.spec())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else Path("runs") / calibration.spec.name
    try:
        result = run_calibration(calibration, out, executor, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"tme: calibration stopped; finished generations and members in {out} are kept: run the same "
              "command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{calibration.spec.name}: {len(result.generations)} generation(s), {result.members} members in the "
          f"journal, {result.wall_s:.0f} s; posterior in {out}/posterior_summary.csv and posterior.png")
    if result.summary is not None:
        print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _cmd_sensitivity(args) -> int:
    from pathlib import Path

    try:
        import pandas  # noqa: F401
        import SALib  # noqa: F401
    except ImportError as exc:
        raise UserError(f"tme sensitivity needs SALib and pandas ({exc}); install them with "
                        "pip install 'tme-abm[calibration]'") from None
    from abm.calibration.sensitivity import run_sensitivity
    from abm.calibration.spec import load_calibration

    if args.n_base < 2 or args.n_base & (args.n_base - 1):
        raise UserError(f"--n-base {args.n_base}: expected a power of 2 (Sobol sequences), e.g. 16 or 64")
    overrides = list(args.set or [])
    _check_nesting(overrides)
    calibration = load_calibration(args.calibration, overrides)
    try:
        executor = _executor_flags(args, calibration.spec.executor.spec())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out) if args.out else Path("runs") / f"{calibration.spec.name}_sobol"
    result = run_sensitivity(calibration, out, n_base=args.n_base, executor=executor, progress=not args.quiet)
    print(f"{len(result.members)} members in {result.wall_s:.0f} s; {out}/sobol.csv and sobol.png")
    print(result.indices.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _cmd_config_schema(args) -> int:
    from abm.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tme``."""
    p = argparse.ArgumentParser(prog="tme", description="Tumour-microenvironment agent-based simulator.")
    p.add_argument("--version", action="version", version=f"tme-abm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def executor_args(sp):
        """Where the members of a batch or the patients of a trial run (docs/CLUSTER.md)."""
        sp.add_argument("--workers", type=int, metavar="N", help="local process pool of N workers (1: serially)")
        sp.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask scheduler, e.g. tcp://host:8786")
        sp.add_argument("--dask-local", type=int, metavar="N", help="run on a Dask LocalCluster of N workers")
        sp.add_argument("--slurm", action="store_true", help="run on SLURM jobs via dask-jobqueue (docs/CLUSTER.md)")
        sp.add_argument("--account", help="SLURM account (with --slurm)")
        sp.add_argument("--partition", help="SLURM partition (with --slurm)")
        sp.add_argument("--gpus-per-job", type=int, metavar="G", help="GPUs per SLURM job (with --slurm)")
        sp.add_argument("--walltime", metavar="HH:MM:SS", help="SLURM job time limit (with --slurm)")
        sp.add_argument("--jobs", type=int, metavar="J", help="SLURM jobs to keep running (with --slurm)")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    def config_args(sp):
        sp.add_argument("config", help="TOML config file")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value (TOML syntax), e.g. --set grid.shape=[64,64]; repeatable")
        sp.add_argument("--seed", type=int, help="root seed (same as --set seed=N)")
        sp.add_argument("--backend", choices=["numpy", "cupy", "auto"], help="array backend")

    sp = sub.add_parser("run", help="run a simulation from a config")
    config_args(sp)
    sp.add_argument("--device", type=int, metavar="N",
                    help="GPU to run on (backend cupy or auto), numbered as CUDA sees them; default the first")
    sp.add_argument("--out", help="output directory (default runs/<name>)")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_run)

    sp = sub.add_parser("validate", help="check a config without running it")
    config_args(sp)
    sp.set_defaults(func=_cmd_validate)

    sp = sub.add_parser("inspect", help="summarise a run file")
    sp.add_argument("file", help="run file (sim.h5)")
    sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sp.set_defaults(func=_cmd_inspect)

    sp = sub.add_parser("replay", help="restart a run from a snapshot, optionally with changed parameters")
    sp.add_argument("file", help="parent run file (sim.h5); never modified")
    sp.add_argument("--from", dest="from_min", type=_time_min, required=True, metavar="T",
                    help="restart time: minutes, or with a unit (7d, 12h, 90min); the snapshot at or just before T")
    sp.add_argument("--until", type=_time_min, metavar="T2",
                    help="end time (minutes or with a unit); default the config's duration")
    sp.add_argument("--therapy-file", metavar="FILE",
                    help="TOML with [therapy.<name>], [radiotherapy.<name>] and [virus.<name>] tables (and optionally "
                    "[patient], [effects]) added to the branch; a therapy of the same name replaces the parent's")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="change a config value for the branch (TOML syntax); repeatable")
    sp.add_argument("--backend", choices=["numpy", "cupy", "auto"],
                    help="array backend (default: the one that wrote the parent, for bit-identical restarts)")
    sp.add_argument("--device", type=int, metavar="N",
                    help="GPU to run on (backend cupy or auto), numbered as CUDA sees them; default the first")
    sp.add_argument("--out", help="output directory (default <parent run dir>-replay-t<T>)")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_replay)

    sp = sub.add_parser("plot", help="write PNG plots of a run file")
    sp.add_argument("file", help="run file (sim.h5)")
    sp.add_argument("--out", help="directory for the PNGs (default: plots/ next to the file)")
    sp.add_argument("--times", type=float, nargs="+", metavar="T",
                    help="times (min) of the field maps (default: first, middle and last snapshot)")
    sp.add_argument("--dpi", type=int, default=110, help="resolution of the PNGs (default 110)")
    sp.set_defaults(func=_cmd_plot)

    sp = sub.add_parser("movie", help="export a movie (.mp4 or .gif), one frame per snapshot")
    sp.add_argument("file", help="run file (sim.h5)")
    sp.add_argument("-o", "--output", required=True, help="output video, .mp4 or .gif")
    sp.add_argument("--layers", action="append", metavar="NAME[,NAME...]",
                    help="cell layers (tumour, necrotic, vessels) and fields (e.g. oxygen); default all")
    sp.add_argument("--start", type=float, metavar="T", help="first time (min); default the first snapshot")
    sp.add_argument("--end", type=float, metavar="T", help="last time (min); default the last snapshot")
    sp.add_argument("--fps", type=float, default=5.0, help="frames per second (default 5)")
    sp.add_argument("--size", metavar="WxH", help="frame size in pixels (default 432x432 per panel)")
    sp.add_argument("--dpi", type=int, default=100, help="drawing resolution (default 100)")
    view = sp.add_mutually_exclusive_group()
    view.add_argument("--slice", action="store_true", help="3-D: a plane across --axis at --index (default)")
    view.add_argument("--projection", action="store_true", help="3-D: maximum projection along --axis")
    sp.add_argument("--axis", default="z", help="3-D: axis x, y or z (default z)")
    sp.add_argument("--index", type=int, help="3-D: slice index (default the middle plane)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_movie)

    sp = sub.add_parser("compare", help="overlay runs in one figure: burden vs a common baseline, immune, drugs")
    sp.add_argument("files", nargs="+", metavar="FILE", help="run files (sim.h5), one or more")
    sp.add_argument("-o", "--output", required=True, help="output image, e.g. compare.png")
    sp.add_argument("--labels", metavar="A,B,...",
                    help="one label per file, comma-separated (default: the therapies, else the directory name)")
    sp.add_argument("--dpi", type=int, default=110, help="resolution (default 110)")
    sp.add_argument("--sd-min-days", type=float, metavar="DAYS",
                    help="RECIST: days without progression for SD to be the best response (default 42)")
    sp.add_argument("--json", action="store_true", help="print the table as JSON")
    sp.set_defaults(func=_cmd_compare)

    sp = sub.add_parser("viz", help="interactive browser view: simulate a config live, or replay a run file")
    sp.add_argument("target", metavar="CONFIG|RUN.h5",
                    help="TOML config (simulated live, parameter sliders apply on Reset) or run file (replayed)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value (TOML syntax), e.g. --set grid.shape=[40,40]; repeatable")
    sp.add_argument("--seed", type=int, help="root seed (same as --set seed=N)")
    sp.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks a free one)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    sp.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    sp.set_defaults(func=_cmd_viz)

    sp = sub.add_parser("batch", help="run a parameter sweep (grid, zip, LHS/Sobol, replicates); resumable")
    sp.add_argument("sweep", help="sweep file (TOML; docs/BATCH.md)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a config value for every member (TOML syntax), added to the sweep's [set]; repeatable")
    sp.add_argument("--out", help="batch directory (default: the sweep's out, else runs/<name>)")
    executor_args(sp)
    sp.set_defaults(func=_cmd_batch)

    sp = sub.add_parser("trial", help="a virtual clinical trial: patients drawn from distributions, paired arms")
    sp.add_argument("trial", help="trial file (TOML; docs/TRIALS.md)")
    sp.add_argument("--patients", type=int, metavar="N", help="number of patients (replaces the file's)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="change a value of the trial file (TOML syntax), e.g. follow_up_days=14; repeatable")
    sp.add_argument("-o", "--out", help="trial directory (default runs/<name>)")
    executor_args(sp)
    sp.set_defaults(func=_cmd_trial)

    sp = sub.add_parser("calibrate", help="fit free parameters to observed targets by ABC-SMC (pyABC); resumable")
    sp.add_argument("calibration", help="calibration file (TOML; docs/CALIBRATION.md)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="change a value of the calibration file (TOML syntax), e.g. abc.population=50; repeatable")
    sp.add_argument("-o", "--out", help="calibration directory (default runs/<name>)")
    executor_args(sp)
    sp.set_defaults(func=_cmd_calibrate)

    sp = sub.add_parser("sensitivity", help="Sobol indices (SALib) of a calibration file's targets to its parameters")
    sp.add_argument("calibration", help="calibration file (TOML; docs/CALIBRATION.md): priors are the inputs")
    sp.add_argument("--n-base", type=int, default=16, metavar="N",
                    help="Saltelli base sample (power of 2); N x (D + 2) members for D parameters (default 16)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a value of the calibration file")
    sp.add_argument("-o", "--out", help="output directory (default runs/<name>_sobol)")
    executor_args(sp)
    sp.set_defaults(func=_cmd_sensitivity)

    sp = sub.add_parser("config", help="config utilities")
    csub = sp.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    csub.required = True
    sc = csub.add_parser("schema", help="print the config's JSON schema")
    sc.set_defaults(func=_cmd_config_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tme``; returns the exit status."""
    from abm.backend import BackendError, tune_host_allocator
    from abm.config import ConfigError
    from abm.io.reader import RunFileError
    from abm.io.writer import RunWriteError
    from abm.runner import OutputExistsError, RunInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    tune_host_allocator()
    try:
        return args.func(args)
    except (ConfigError, RunFileError, OutputExistsError, BackendError, UserError, RunWriteError) as exc:
        print(f"tme: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as exc:
        print(f"tme: {exc}", file=sys.stderr)
        _print_summary(exc.result)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("tme: aborted; snapshots written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # disk full, permission denied, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"tme: error: could not write or read a file{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
