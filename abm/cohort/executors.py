"""Running many independent tasks (batch members, trial patients) on one interface.

:func:`run_tasks` runs ``fn(payload)`` for each ``(key, payload)`` and yields ``(key, result)`` in the order the
tasks finish, whatever runs them:

``serial``
    In this process, one after the other (also ``local`` with one worker).
``local``
    A :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes started with ``spawn`` (never
    ``fork``: h5py and thread pools do not survive a fork).
``dask``
    A Dask distributed cluster: an existing scheduler (``scheduler``) or a ``LocalCluster`` started here
    (``dask_local`` workers); see :mod:`abm.adapters.dask_runner`.
``slurm``
    Dask workers in SLURM jobs through ``dask_jobqueue.SLURMCluster`` (``slurm``: account, partition, GPUs per
    job, walltime...).

An exception inside ``fn`` becomes a :class:`TaskFailure` for that task and never stops the others; so do a
payload or a result that cannot be pickled and a worker process that dies (in the local pool a task that takes
its worker down is retried once alone, so the tasks that happened to run beside it are not blamed). A run that
``fn`` stopped cleanly on Ctrl-C or SIGTERM (:class:`abm.runner.RunInterrupted`) is a failure with
``interrupted = True`` and ``error_type`` ``"RunInterrupted"``.

Ctrl-C in the caller cancels the tasks that have not started, asks the running ones to stop (SIGTERM, which
:func:`abm.runner.run_simulation` turns into a clean stop with a final snapshot), yields what they return and
then re-raises :class:`KeyboardInterrupt`; a second Ctrl-C kills them at once. A run that comes back stopped
(its process got the signal, e.g. SIGTERM from a scheduler) stops the remaining tasks the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXECUTOR_KINDS", "ExecutorSpec", "SlurmSpec", "TaskFailure", "run_tasks"]

log = logging.getLogger("tme")

EXECUTOR_KINDS = ("serial", "local", "dask", "slurm")


@dataclass(frozen=True)
class SlurmSpec:
    """One SLURM job template for Dask workers (``dask_jobqueue.SLURMCluster``).

    Attributes
    ----------
    account, partition : str, optional
        ``#SBATCH --account`` and ``--partition``; the cluster's defaults where not given.
    gpus_per_job : int
        GPUs requested per job (``--gres=gpu:N``); each job then runs N worker processes, each bound to one of
        the job's GPUs through ``CUDA_VISIBLE_DEVICES``. 0: CPU jobs.
    walltime : str
        Job time limit, ``HH:MM:SS``.
    cores : int
        CPU cores per job.
    memory : str
        Memory per job, e.g. ``"16GB"``.
    jobs : int
        Number of jobs kept running (Dask workers = jobs x processes per job).
    processes : int
        Worker processes per job for CPU jobs (GPU jobs use one per GPU).
    python : str, optional
        Python executable on the compute nodes; default the one running ``tme``.
    job_extra : tuple of str
        Extra ``#SBATCH`` directives, e.g. ``("--qos=short",)``.
    prologue : tuple of str
        Shell lines run before the worker starts, e.g. ``("module load cuda/12.4",)``.
    log_directory : str, optional
        Where SLURM writes the jobs' stdout/stderr.
    """

    account: str | None = None
    partition: str | None = None
    gpus_per_job: int = 0
    walltime: str = "01:00:00"
    cores: int = 1
    memory: str = "4GB"
    jobs: int = 1
    processes: int = 1
    python: str | None = None
    job_extra: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    log_directory: str | None = None


@dataclass(frozen=True)
class ExecutorSpec:
    """Where and how :func:`run_tasks` runs its tasks.

    Attributes
    ----------
    kind : str
        ``"serial"``, ``"local"``, ``"dask"`` or ``"slurm"``.
    workers : int
        Local process-pool size; 1 runs in this process, one task after the other.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``) for ``kind = "dask"``.
    dask_local : int, optional
        For ``kind = "dask"`` without ``scheduler``: start a ``LocalCluster`` of this many workers (one per
        visible GPU where ``CUDA_VISIBLE_DEVICES`` names several and this is not given).
    slurm : SlurmSpec, optional
        Job template for ``kind = "slurm"``.
    """

    kind: str = "local"
    workers: int = 1
    scheduler: str | None = None
    dask_local: int | None = None
    slurm: SlurmSpec | None = None

    def __post_init__(self):
        if self.kind not in EXECUTOR_KINDS:
            raise ValueError(f"executor kind '{self.kind}' is not one of {', '.join(EXECUTOR_KINDS)}")
        if self.workers < 1:
            raise ValueError(f"executor workers = {self.workers}: expected at least 1")
        if self.dask_local is not None and self.dask_local < 1:
            raise ValueError(f"executor dask_local = {self.dask_local}: expected at least 1 worker")

    def describe(self) -> str:
        """One line naming the executor, for logs."""
        if self.kind == "local" and self.workers > 1:
            return f"local pool of {self.workers} processes"
        if self.kind in ("serial", "local"):
            return "this process, serially"
        if self.kind == "dask":
            return f"Dask scheduler {self.scheduler}" if self.scheduler else \
                f"Dask LocalCluster ({self.dask_local or 'auto'} workers)"
        s = self.slurm or SlurmSpec()
        return (f"SLURM via dask-jobqueue: {s.jobs} job(s), partition {s.partition or 'default'}, "
                f"{s.gpus_per_job} GPU(s)/job, walltime {s.walltime}")


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised (or whose worker died) instead of returning a result.

    ``interrupted`` is True when the task was a run stopped cleanly by Ctrl-C or SIGTERM rather than a failure.
    """

    key: str
    error_type: str
    message: str
    traceback: str = field(default="", repr=False)
    interrupted: bool = False

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}" if self.message else self.error_type


def guarded_call(fn: Callable[[Any], Any], key: str, payload: Any) -> Any:
    """``fn(payload)``, or a :class:`TaskFailure` describing the exception it raised (runs in the worker)."""
    try:
        return fn(payload)
    except Exception as exc:  # noqa: BLE001 (any failure of one task is that task's result)
        return failure_from(key, exc)


def failure_from(key: str, exc: BaseException) -> TaskFailure:
    """A :class:`TaskFailure` for ``exc`` raised by task ``key``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    runner = sys.modules.get("abm.runner")  # a RunInterrupted can only come from a module already imported
    stopped = runner is not None and isinstance(exc, runner.RunInterrupted)
    return TaskFailure(str(key), type(exc).__name__, str(exc), text, interrupted=stopped)


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Iterable[tuple[str, Any]],
    spec: ExecutorSpec,
    *,
    desc: str = "members",
    progress: bool = True,
    total: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """Run ``fn(payload)`` for each ``(key, payload)`` in ``tasks``; yield ``(key, result)`` as they finish.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function of one argument.
    tasks : iterable of (str, object)
        Keys (unique) and payloads; consumed lazily, so a long generator keeps memory flat.
    spec : ExecutorSpec
        Where to run.
    desc : str
        What the progress bar counts.
    progress : bool
        Show a tqdm bar over the tasks on stderr.
    total : int, optional
        Number of tasks, for the bar, where ``tasks`` is a generator (a list is counted).

    Yields
    ------
    (str, object)
        The key and ``fn``'s return value, or a :class:`TaskFailure`.

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C, once the running tasks have stopped and their results have been yielded.
    """
    from tqdm import tqdm

    tasks = list(tasks) if not isinstance(tasks, Iterator) else tasks
    total = len(tasks) if isinstance(tasks, list) else total
    bar = tqdm(total=total, unit=desc.rstrip("s") or "task", desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        if spec.kind in ("dask", "slurm"):
            from abm.adapters.dask_runner import run_dask_tasks

            source = run_dask_tasks(fn, tasks, spec)
        elif spec.workers > 1 and spec.kind == "local":
            source = _run_pool(fn, tasks, spec.workers)
        else:
            source = _run_serial(fn, tasks)
        for key, result in source:
            bar.update(1)
            if isinstance(result, TaskFailure):
                bar.set_postfix_str(f"last failed: {key}", refresh=False)
            yield key, result
    finally:
        bar.close()


def _is_run_interrupted(result: Any) -> bool:
    return isinstance(result, TaskFailure) and result.interrupted


def _run_serial(fn, tasks) -> Iterator[tuple[str, Any]]:
    """In this process. The run's own Ctrl-C handling stops it cleanly; the remaining tasks are then skipped."""
    for key, payload in tasks:
        result = guarded_call(fn, key, payload)
        yield key, result
        if _is_run_interrupted(result):
            raise KeyboardInterrupt


_STOP_EVENT = None  # in a pool worker: set by the parent once the batch is stopping


def _worker_init(stop_event) -> None:
    """Pool workers leave Ctrl-C to the parent, which forwards a stop as SIGTERM to the busy ones.

    An idle worker ignores both signals (so it neither prints a traceback nor breaks the pool); a worker inside
    :func:`abm.runner.run_simulation` has its own handler there and stops the run after the current step. A task
    picked up after the parent set ``stop_event`` is not started.
    """
    global _STOP_EVENT
    _STOP_EVENT = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _pool_call(fn, key: str, payload: Any) -> Any:
    """:func:`guarded_call` in a pool worker, unless the parent is stopping (then a ``"Cancelled"`` failure)."""
    if _STOP_EVENT is not None and _STOP_EVENT.is_set():
        return TaskFailure(str(key), "Cancelled", "not started: the batch was stopping", interrupted=True)
    return guarded_call(fn, key, payload)


class _Pool:
    """A spawn-context ``ProcessPoolExecutor`` and the event that tells its workers the batch is stopping."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self.stop_event = context.Event()
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                            initargs=(self.stop_event,))

    def submit(self, fn, key: str, payload: Any) -> Future:
        return self.executor.submit(_pool_call, fn, key, payload)

    def stop(self) -> None:
        """Start no more tasks and ask the busy workers to stop (SIGTERM)."""
        self.stop_event.set()
        self.signal(signal.SIGTERM)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker processes (``ProcessPoolExecutor`` offers no public way)."""
        for proc in list((getattr(self.executor, "_processes", None) or {}).values()):
            try:
                os.kill(proc.pid, signum)
            except (ProcessLookupError, OSError):
                pass

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _run_pool(fn, tasks, workers: int) -> Iterator[tuple[str, Any]]:
    """A spawn-context process pool with at most ``workers`` tasks submitted at a time.

    One task per worker and no more: a task handed to a :class:`ProcessPoolExecutor` may already sit in its call
    queue, where it can no longer be cancelled, so on Ctrl-C it would run to the end after the others stopped.
    """
    tasks = iter(tasks)
    suspects: list[tuple[str, Any]] = []  # tasks whose worker died: retried alone afterwards
    pool = _Pool(workers)
    running: dict[Future, tuple[str, Any]] = {}
    try:
        exhausted = False
        while True:
            while not exhausted and len(running) < workers:
                item = next(tasks, None)
                if item is None:
                    exhausted = True
                    break
                running[pool.submit(fn, item[0], item[1])] = item
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = stopped = False
            for fut in done:
                key, payload = running.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    suspects.append((key, payload))
                    broken = True
                    continue
                except Exception as exc:  # noqa: BLE001 (the payload or the result could not be pickled)
                    result = failure_from(key, exc)
                yield key, result
                stopped = stopped or _is_run_interrupted(result)
            if stopped:  # the workers were told to stop (Ctrl-C to the process group, SIGTERM): stop the rest
                raise KeyboardInterrupt
            if broken:  # every task in flight failed with the pool; retry them alone later
                suspects.extend(running.values())
                running.clear()
                pool.shutdown()
                pool = _Pool(workers)
        for key, payload in suspects:
            yield key, _run_alone(fn, key, payload)
    except KeyboardInterrupt:
        yield from _drain(pool, running)
        raise
    finally:
        pool.shutdown()


def _run_alone(fn, key: str, payload: Any) -> Any:
    """Run one task in a pool of its own, so that a worker dying is blamed on this task alone."""
    pool = _Pool(1)
    fut = pool.submit(fn, key, payload)
    try:
        return fut.result()
    except BrokenProcessPool as exc:
        return TaskFailure(str(key), "WorkerDied", f"the worker process running it died ({exc})")
    except Exception as exc:  # noqa: BLE001 (the payload or the result could not be pickled)
        return failure_from(key, exc)
    except KeyboardInterrupt:
        for _ in _drain(pool, {fut: (key, payload)}):
            pass
        raise
    finally:
        pool.shutdown()


def _drain(pool: _Pool, running: dict[Future, tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """After Ctrl-C: start no more tasks, ask the busy workers to stop, and yield what the started ones return."""
    pool.stop()
    started = {f: kv for f, kv in running.items() if not f.cancel()}
    log.warning("stopping: waiting for the running tasks to stop cleanly (Ctrl-C again to kill them)")
    try:
        for fut in list(started):
            key, _ = started.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool as exc:
                result = TaskFailure(str(key), "WorkerDied", f"the worker process running it died ({exc})")
            except Exception as exc:  # noqa: BLE001 (the payload or the result could not be pickled)
                result = failure_from(key, exc)
            if not (isinstance(result, TaskFailure) and result.error_type == "Cancelled"):
                yield key, result
    except KeyboardInterrupt:
        pool.signal(signal.SIGKILL)
        log.warning("killed %d running task(s); their output files are partial", len(started))
