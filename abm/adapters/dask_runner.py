"""Dask back end of :func:`abm.cohort.executors.run_tasks`: a running scheduler, a ``LocalCluster``, or SLURM jobs.

Needs ``pip install 'tme-abm[cluster]'`` (``dask[distributed]``, ``dask-jobqueue``). The scheduling is Dask's;
this module only builds the cluster, binds each worker to one GPU and keeps a bounded number of tasks submitted
so that the client's memory stays flat however many tasks there are.

GPU binding: where a worker sees several GPUs (``CUDA_VISIBLE_DEVICES=0,1,...`` from SLURM's ``--gres`` or from
the shell), the :func:`bind_one_gpu_plugin` plugin narrows it to the one whose position matches the worker's index
(``LocalCluster`` worker ``i``; ``dask worker --nworkers N`` names its processes ``<name>-0 .. <name>-<N-1>``)
before any task can import CuPy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from abm.cohort.executors import ExecutorSpec, SlurmSpec, TaskFailure, guarded_call

__all__ = ["bind_one_gpu_plugin", "dask_client", "local_cluster", "run_dask_tasks", "slurm_cluster", "visible_gpus"]

# Resource every SLURM worker offers once and every task asks for: one simulation per worker process at a time,
# whatever number of threads dask-jobqueue gives the worker (cores / processes).
SLOT_RESOURCE = "tme_slot"


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise RuntimeError(f"the Dask executors need dask.distributed: pip install 'tme-abm[cluster]' ({exc})") \
            from None
    return distributed


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else those CuPy counts, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: no GPUs)
        return []


def _worker_index(name: Any) -> int | None:
    """The position of a worker among its siblings: ``3`` for LocalCluster worker 3 or for ``tme-7-3``."""
    text = str(name).rsplit("-", 1)[-1]
    return int(text) if text.isdigit() else None


def _bind_devices(worker_name: Any) -> None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` of this process to the GPU at the worker's index (see module doc)."""
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = _worker_index(worker_name)
    if len(devices) > 1 and index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]


def bind_one_gpu_plugin():
    """A ``distributed.WorkerPlugin`` that binds each worker to one GPU before it runs any task."""
    distributed = _import_distributed()

    class BindOneGPU(distributed.WorkerPlugin):
        name = "tme-bind-one-gpu"

        def setup(self, worker) -> None:
            _bind_devices(worker.name)

    return BindOneGPU()


def local_cluster(n_workers: int | None = None):
    """A ``LocalCluster`` of single-threaded worker processes.

    ``n_workers`` of them, or one per visible GPU, else one per CPU core.
    """
    distributed = _import_distributed()
    n = n_workers or len(visible_gpus()) or os.cpu_count() or 1
    # The worker processes inherit an ignored SIGINT: Ctrl-C in the terminal then reaches only this process,
    # which cancels the tasks and closes the cluster, instead of every worker printing its own traceback.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        silence_logs=logging.ERROR)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def slurm_cluster(spec: SlurmSpec):
    """A ``dask_jobqueue.SLURMCluster`` for ``spec``, with no job submitted yet (``cluster.scale(jobs=...)``).

    A GPU job (``gpus_per_job = G``) asks ``--gres=gpu:G`` and runs G worker processes, each bound to one of the
    job's GPUs; every worker runs one simulation at a time (resource ``tme_slot=1``).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise RuntimeError(f"the SLURM executor needs dask-jobqueue: pip install 'tme-abm[cluster]' ({exc})") \
            from None
    processes = spec.gpus_per_job if spec.gpus_per_job > 0 else spec.processes
    directives = list(spec.job_extra)
    if spec.gpus_per_job > 0:
        directives.append(f"--gres=gpu:{spec.gpus_per_job}")
    cluster = SLURMCluster(
        account=spec.account,
        queue=spec.partition,
        cores=max(spec.cores, processes),
        processes=processes,
        memory=spec.memory,
        walltime=spec.walltime,
        python=spec.python or sys.executable,
        job_name="tme",
        job_extra_directives=directives,
        job_script_prologue=list(spec.prologue),
        worker_extra_args=["--resources", f"{SLOT_RESOURCE}=1"],
        log_directory=spec.log_directory,
        scheduler_options={"dashboard_address": None},
    )
    return cluster


@contextlib.contextmanager
def dask_client(spec: ExecutorSpec):
    """A connected ``Client`` (and the number of workers to plan for), closing what was started here."""
    distributed = _import_distributed()
    cluster = None
    try:
        if spec.kind == "slurm":
            slurm = spec.slurm or SlurmSpec()
            cluster = slurm_cluster(slurm)
            cluster.scale(jobs=slurm.jobs)
            planned = slurm.jobs * (slurm.gpus_per_job or slurm.processes)
        elif spec.scheduler:
            planned = 0
        else:
            cluster = local_cluster(spec.dask_local)
            planned = len(cluster.workers)
        with distributed.Client(spec.scheduler if cluster is None else cluster) as client:
            client.register_plugin(bind_one_gpu_plugin())
            yield client, planned
    finally:
        if cluster is not None:
            cluster.close()


def run_dask_tasks(fn: Callable[[Any], Any], tasks, spec: ExecutorSpec) -> Iterator[tuple[str, Any]]:
    """Run ``fn`` over ``tasks`` on the cluster of ``spec``; yield ``(key, result or TaskFailure)`` as they finish.

    At most twice as many tasks as there are workers are submitted at a time. On ``KeyboardInterrupt`` every
    submitted task is cancelled and a cluster started here is closed (its workers, or SLURM jobs, end); a task
    already running on an external scheduler's worker runs on to its end, since Dask cannot interrupt it.
    """
    distributed = _import_distributed()
    resources = {SLOT_RESOURCE: 1} if spec.kind == "slurm" else None
    run_id = uuid.uuid4().hex[:8]
    with dask_client(spec) as (client, planned):
        tasks = iter(tasks)
        pending = distributed.as_completed()
        keys: dict[str, str] = {}
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            limit = 2 * max(planned, len(client.nthreads()), 1)
            while not exhausted and pending.count() < limit:
                item = next(tasks, None)
                if item is None:
                    exhausted = True
                    return
                key, payload = item
                fut = client.submit(guarded_call, fn, key, payload, key=f"tme-{run_id}-{key}", pure=False,
                                    resources=resources)
                keys[fut.key] = key
                pending.add(fut)

        try:
            refill()
            while not pending.is_empty():
                fut = next(pending)
                key = keys.pop(fut.key)
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 (KilledWorker, lost scheduler...: this task failed)
                    result = TaskFailure(str(key), type(exc).__name__, str(exc))
                fut.release()
                yield key, result
                refill()
        except BaseException:
            # cancelling running tasks and closing the cluster make Dask log warnings that say nothing new
            logging.getLogger("distributed").setLevel(logging.ERROR)
            client.cancel(list(pending.futures))
            raise
