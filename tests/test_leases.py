"""Leases are renewed from the worker's LeaseKeeper thread (a busy event loop keeps them: tests/faults/test_busy.py);
a lease taken over by another holder is noticed there, and the stale run is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from taskmesh import Client, Job, JobState, LeaseLost, task
from taskmesh.store import scripts
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}
release = threading.Event()
runs: list[Job] = []
refused: list[int] = []


@task(name="leases.held")
def held(job: Job) -> int:
    runs.append(job)
    release.wait(20)
    try:
        job.progress(50)
    except LeaseLost:
        refused.append(job.token)
    return job.token


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    release.clear()
    runs.clear()
    refused.clear()
    yield
    release.set()  # never leave a task thread blocked


def test_a_lease_taken_over_is_noticed_and_the_stale_run_refused(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    handle = held.enqueue()
    running = taskmesh_worker([held], concurrency=1, **FAST)  # one slot: the stale run keeps it
    wait_until(lambda: runs, timeout=5, message="first run started")
    keys = taskmesh_client.keys("default")
    conn = taskmesh_client.redis
    conn.script_load(scripts.source("sweep"))
    with conn.pipeline(transaction=True) as pipe:  # atomic, so no renewal slips in between
        pipe.zadd(keys.active, {handle.id: 0})  # the lease ran out, as if the worker had hung
        args = scripts.sweep_args(taskmesh_client.settings)
        pipe.evalsha(scripts.sha("sweep"), len(keys.all), *keys.all, *args)
        pipe.execute()
    wait_until(lambda: runs[0].lease_lost, timeout=5, message="the lease keeper noticed the lost lease")
    release.set()
    assert handle.result(timeout=5) == runs[-1].token
    assert len(runs) == 2 and refused == [runs[0].token]
    status = handle.status()
    assert (status.state, status.stalls, status.progress) == (JobState.COMPLETED, 1, 50)
    wait_until(lambda: running.worker.stats.refused == 1, timeout=5, message="the stale result refused")
