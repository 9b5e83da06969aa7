"""Running a simulation to a file: the loop around :meth:`abm.model.Simulation.step`.

The runner owns the output directory (HDF5 file, resolved config, log, summary plot), the progress bar and
signal handling. Ctrl-C or SIGTERM lets the current step finish, writes a final snapshot and closes the file
cleanly; a second Ctrl-C aborts at once, keeping everything flushed so far.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from abm.config import Config, config_to_toml
from abm.io.writer import RunWriteError, RunWriter
from abm.model import Simulation

__all__ = ["OutputExistsError", "RunInterrupted", "RunResult", "SnapshotPlan", "run_simulation"]

log = logging.getLogger("tme")


class OutputExistsError(FileExistsError):
    """The output directory already holds a run and overwriting was not asked for."""


class RunInterrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM after writing a final snapshot."""

    def __init__(self, result: RunResult):
        self.result = result
        super().__init__(f"interrupted at t = {result.time_min:g} min; output in {result.out_dir}")


@dataclass
class RunResult:
    """What a finished (or interrupted) run produced."""

    out_dir: Path
    h5_path: Path
    time_min: float
    steps: int
    wall_s: float
    final: dict = field(default_factory=dict)
    interrupted: bool = False


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps; a second SIGINT aborts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested (signal %d): finishing the step and writing a final snapshot", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


@dataclass(frozen=True)
class SnapshotPlan:
    """Which steps get a snapshot, from ``output.snapshots`` (docs/FORMAT.md, Snapshots).

    ``kind`` is ``"interval"`` (step 0, every ``every`` steps and the end), ``"final"`` (the end only),
    ``"none"`` or ``"times"`` (the steps in ``steps``). A run stopped by Ctrl-C ends with a snapshot unless the
    kind is ``"none"``.
    """

    kind: str
    every: int = 1
    steps: frozenset = frozenset()

    @classmethod
    def of(cls, output, dt_min: float) -> SnapshotPlan:
        """The plan of an ``[output]`` config section for steps of ``dt_min`` minutes."""
        if isinstance(output.snapshots, list):
            return cls("times", steps=frozenset(int(round(t / dt_min)) for t in output.snapshots))
        return cls(output.snapshots, every=max(1, int(round(output.snapshot_interval_min / dt_min))))

    def at_start(self, step: int) -> bool:
        """Whether the state the run starts from (step ``step``) is written."""
        return self.kind == "interval" or (self.kind == "times" and step in self.steps)

    def at_step(self, step: int) -> bool:
        """Whether the state after step ``step`` (counted from 0 at the start of the original run) is written."""
        if self.kind == "interval":
            return step % self.every == 0
        return self.kind == "times" and step in self.steps

    def at_end(self, interrupted: bool) -> bool:
        """Whether the last state is written when it has not been already."""
        return self.kind in ("interval", "final") or (interrupted and self.kind != "none")


def prepare_output_dir(out_dir: Path, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse to reuse one that holds a run unless ``overwrite``."""
    out_dir = Path(out_dir)
    if (out_dir / "sim.h5").exists() and not overwrite:
        raise OutputExistsError(
            f"{out_dir} already holds a run (sim.h5); choose another --out or pass --overwrite to replace it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


class _LogFileHandler(logging.FileHandler):
    """``run.log``: a record the disk refuses (full, quota) is dropped quietly, not printed as a traceback."""

    def handleError(self, record):  # noqa: N802 (logging's name)
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def _attach_log(out_dir: Path) -> logging.Handler:
    handler = _LogFileHandler(out_dir / "run.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run_simulation(
    config: Config,
    out_dir: Path | None = None,
    *,
    sim: Simulation | None = None,
    until_min: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra_attrs: dict | None = None,
) -> RunResult:
    """Run ``config`` (or continue ``sim``) to its end time, writing ``out_dir``.

    Parameters
    ----------
    config : Config
        Validated configuration (for a continued run, the possibly changed config of the branch).
    out_dir : Path, optional
        Output directory; default ``config.output_dir()``.
    sim : Simulation, optional
        A simulation restored from a snapshot to continue; default a fresh one from ``config``.
    until_min : float, optional
        End time (min); default ``config.time.duration_min``.
    overwrite : bool
        Replace a run already in ``out_dir``.
    progress : bool
        Show a progress bar on stderr.
    extra_attrs : dict, optional
        Root attributes for the HDF5 file (e.g. parent file and branch time of a replay).

    Returns
    -------
    RunResult

    Raises
    ------
    OutputExistsError
        If ``out_dir`` holds a run and ``overwrite`` is false.
    RunInterrupted
        After a clean stop on Ctrl-C or SIGTERM.
    abm.io.RunWriteError
        If writing the run file fails (e.g. the disk is full). The file is closed with
        ``end_reason = "write_failed"`` where it can still take that, every snapshot flushed before stays
        readable, and the message (also logged) says so and how to continue.
    """
    from tqdm import tqdm

    out_dir = prepare_output_dir(Path(out_dir) if out_dir else config.output_dir(), overwrite)
    handler = _attach_log(out_dir)
    t_wall = time.perf_counter()
    writer = None
    try:
        (out_dir / "config.resolved.toml").write_text(config_to_toml(config), encoding="utf-8")
        sim = sim or Simulation(config)
        end_min = config.time.duration_min if until_min is None else until_min
        n_steps = max(0, int(round((end_min - sim.time_min) / sim.dt_min)))
        plan = SnapshotPlan.of(config.output, sim.dt_min)
        ts_every = config.output.timeseries_every_steps
        log.info("run '%s': backend %s, random %s, grid %s, %d steps of %g min from t = %g min, seed %d",
                 config.name, sim.backend.name, sim.world.generator, list(sim.shape), n_steps, sim.dt_min,
                 sim.time_min, config.seed)
        device = sim.backend.device_info()
        if device:
            log.info("GPU %d: %s, CUDA driver %d, runtime %d, CuPy %s", device["gpu_index"], device["gpu_name"],
                     device["cuda_driver_version"], device["cuda_runtime_version"], device["cupy_version"])
        writer = RunWriter(
            out_dir / "sim.h5", config_to_toml(config), config.seed, sim.backend.name, sim.shape, sim.spacing_um,
            random=sim.world.generator, readouts=sim.readout_declarations(), field_units=sim.field_units(),
            compression=config.output.compression, attrs={**device, **(extra_attrs or {})}, overwrite=True,
        )
        metrics = sim.metrics()
        writer.record(metrics)
        last_snapshot_step = None
        if plan.at_start(sim.step_index):
            writer.write_snapshot(sim.state())
            last_snapshot_step = sim.step_index
        interrupted = False
        bar = tqdm(total=n_steps, unit="step", disable=not progress, dynamic_ncols=True, leave=True)
        try:
            with _StopFlag() as stop:
                for _ in range(n_steps):
                    sim.step()
                    since_start = sim.step_index
                    if since_start % ts_every == 0:
                        metrics = sim.metrics()
                        writer.record(metrics)
                    if plan.at_step(since_start):
                        writer.write_snapshot(sim.state())
                        last_snapshot_step = sim.step_index
                    bar.update(1)
                    if bar.n % 10 == 0 or bar.n == n_steps:
                        bar.set_postfix_str(
                            f"t={sim.time_min / 1440:.2f} d step={sim.step_index} "
                            f"tumour={int(metrics['tumour_cells'])}",
                            refresh=False,
                        )
                    if stop.requested:
                        interrupted = True
                        break
                if sim.step_index % ts_every != 0:
                    metrics = sim.metrics()
                    writer.record(metrics)
                if last_snapshot_step != sim.step_index and plan.at_end(interrupted):
                    writer.write_snapshot(sim.state())
        except BaseException:
            writer.abort()  # keeps every snapshot already flushed
            raise
        finally:
            bar.close()
        writer.close(complete=True, end_reason="interrupted" if interrupted else "finished")
        wall = time.perf_counter() - t_wall
        result = RunResult(out_dir, out_dir / "sim.h5", sim.time_min, sim.step_index, wall, metrics, interrupted)
        log.info("%s at t = %g min after %.1f s: %s", "stopped" if interrupted else "finished", sim.time_min, wall,
                 {k: round(v, 4) for k, v in metrics.items()})
        if config.output.summary_plot:
            from abm.plots import plot_summary

            plot_summary(result.h5_path, out_dir / "summary.png")
        if interrupted:
            raise RunInterrupted(result)
        return result
    except RunWriteError as exc:
        if writer is not None:
            writer.close_after_failure()  # no-op where abort() already did it; never raises
        log.error("%s", exc)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
