"""Bad payloads, odd exceptions and stale runs fail one job at most; the worker goes on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, Job, JobState, Registry, Worker, task
from taskmesh.testing import RunningWorker, drain, running_worker, wait_until


@task(name="robust.ok")
def ok() -> str:
    return "ok"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@task(name="robust.unprintable")
def unprintable() -> None:
    raise Unprintable()


@task(name="robust.cancels_itself")
async def cancels_itself() -> None:
    raise asyncio.CancelledError()


@task(name="robust.exits")
def exits() -> None:
    raise SystemExit(3)


def test_payload_with_a_non_string_task_name_fails_that_job_only(taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("robust.ok")
    taskmesh_client.redis.hset(taskmesh_client.keys("default").payloads, handle.id, '{"t":[1],"a":[],"k":{}}')
    after = ok.enqueue()
    drain(taskmesh_client, [ok], raise_errors=False)
    status = handle.status()
    assert (status.state, (status.error or {}).get("type")) == (JobState.FAILED, "PayloadError")
    assert after.result(timeout=2) == "ok"


def test_odd_exceptions_fail_their_job_and_never_leave_it_active(taskmesh_client: Client) -> None:
    handles = [unprintable.enqueue(), cancels_itself.enqueue(), exits.enqueue()]
    after = ok.enqueue()
    stats = drain(taskmesh_client, [unprintable, cancels_itself, exits, ok], raise_errors=False)
    errors = [h.status().error or {} for h in handles]
    assert [h.status().state for h in handles] == [JobState.FAILED] * 3
    assert [e.get("type") for e in errors] == ["Unprintable", "CancelledError", "SystemExit"]
    assert errors[0]["message"] == "<unprintable Unprintable>"
    assert (stats.failed, after.result(timeout=2)) == (3, "ok")


def test_a_stale_run_cannot_report_progress_for_the_next_attempt(taskmesh_client: Client) -> None:
    first_may_log, first_logged = threading.Event(), threading.Event()

    @task(name="robust.two_runs", timeout=0.3, retries=1, backoff=0)
    def two_runs(job: Job) -> str:
        if job.attempt == 1:  # times out, keeps running in its thread, then reports late
            first_may_log.wait(5)
            job.log("stale line from attempt 1")
            first_logged.set()
            return "late"
        first_may_log.set()
        first_logged.wait(5)
        return "second"

    handle = two_runs.enqueue()
    drain(taskmesh_client, [two_runs])
    status = handle.status()
    assert (status.result, status.attempts) == ("second", 2)
    assert status.logs == []


def test_an_update_with_a_lone_surrogate_cannot_make_redis_refuse_a_step(taskmesh_client: Client) -> None:
    @task(name="robust.bad_log")
    def bad_log(job: Job) -> str:
        job._send("l", "lone surrogate \udcff")  # Job.log cleans this; the worker must survive it anyway
        return "done"

    bad = bad_log.enqueue()
    good = [ok.enqueue() for _ in range(5)]
    with running_worker(taskmesh_client, [bad_log, ok], concurrency=10):
        assert [h.result(timeout=5) for h in good] == ["ok"] * 5
        assert bad.result(timeout=5) == "done"
    assert bad.status().logs == ["lone surrogate ?"]


def test_jobs_leased_ahead_behind_long_jobs_go_to_an_idle_worker(taskmesh_client: Client) -> None:
    gate = threading.Event()

    @task(name="robust.long")
    def long(n: int) -> int:
        gate.wait(10)
        return n

    settings: dict[str, Any] = {"concurrency": 2, "renew_interval": 0.3, "lease_seconds": 3}
    try:
        with running_worker(taskmesh_client, [ok, long], **settings) as first:
            warm = taskmesh_client.enqueue_many([ok.call() for _ in range(200)])  # short jobs: it leases ahead
            assert all(h.result(timeout=5) == "ok" for h in warm)
            handles = taskmesh_client.enqueue_many([long.call(i) for i in range(4)])
            wait_until(lambda: taskmesh_client.counts()["waiting"] == 0, timeout=5, message="all leased")
            # The first worker holds all four: two running, two leased ahead behind them.
            with running_worker(taskmesh_client, [ok, long], **settings) as second:
                wait_until(
                    lambda: len({h.status().worker for h in handles if h.status().state is JobState.ACTIVE}) == 2,
                    timeout=5,
                    message="both workers running long jobs",
                )
                gate.set()
                assert sorted(h.result(timeout=5) for h in handles) == [0, 1, 2, 3]
                assert {h.status().worker for h in handles} == {first.worker.id, second.worker.id}
    finally:
        gate.set()



class RefusingRunner:
    """A runner whose start-up check refuses the worker's tasks."""

    async def start(self, tasks: list[Any]) -> None:
        raise ConfigurationError(f"cannot run {[t.name for t in tasks]}")

    async def run(self, task: Any, job: Job, args: Any, kwargs: Any) -> Any:
        raise AssertionError("never reached")

    async def close(self) -> None:
        return None


def test_a_worker_that_fails_to_start_raises_from_start(taskmesh_client: Client) -> None:
    worker = Worker(Registry([ok]), taskmesh_client.settings, {"inline": RefusingRunner()})
    with pytest.raises(ConfigurationError, match=r"cannot run \['robust.ok'\]"):
        RunningWorker(worker).start()
