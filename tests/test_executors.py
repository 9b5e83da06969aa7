"""The task runner under failure: a task that raises, a payload that cannot be pickled, a worker that dies."""

from __future__ import annotations

import os
import threading

import pytest

from abm.cohort.executors import ExecutorSpec, TaskFailure, run_tasks


def _square(x):
    if x == "boom":
        raise ValueError("boom is not a number")
    if x == "die":
        os._exit(3)  # the worker process ends without a word
    return x * x


def _run(tasks, workers):
    return dict(run_tasks(_square, tasks, ExecutorSpec(kind="local", workers=workers), progress=False))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_that_raises_is_a_failure_and_the_others_finish(workers):
    out = _run([("a", 2), ("b", "boom"), ("c", 3)], workers)
    assert out["a"] == 4 and out["c"] == 9
    assert isinstance(out["b"], TaskFailure) and out["b"].error_type == "ValueError"
    assert "boom is not a number" in str(out["b"])


def test_a_payload_that_cannot_be_pickled_is_a_failure_of_that_task_alone():
    lock = threading.Lock()  # locks do not pickle: the pool cannot send this payload to a worker
    out = _run([("a", 2), ("b", lock), ("c", 3), ("d", 4)], workers=2)
    assert (out["a"], out["c"], out["d"]) == (4, 9, 16)
    assert isinstance(out["b"], TaskFailure) and not out["b"].interrupted
    assert "pickle" in str(out["b"]).lower() or "lock" in str(out["b"]).lower()


def test_a_worker_that_dies_is_blamed_on_its_own_task_only():
    out = _run([("a", 2), ("b", "die"), ("c", 3), ("d", 5)], workers=2)
    assert (out["a"], out["c"], out["d"]) == (4, 9, 25)
    assert isinstance(out["b"], TaskFailure) and out["b"].error_type == "WorkerDied"
