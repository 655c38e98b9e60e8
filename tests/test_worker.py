"""The worker: retries and backoff, delayed jobs, bad payloads, timeouts, graceful stop, wake-ups."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from taskmesh import Client, Job, JobFailed, JobState, Retry, Unrecoverable, WorkerStats, task
from taskmesh.testing import RunningWorker, wait_until

Drain = Callable[..., WorkerStats]
StartWorker = Callable[..., RunningWorker]


def events(client: Client, job_id: str, name: str) -> list[tuple[int, dict[str, str]]]:
    """(stream time in ms, fields) of the job's events called ``name``, oldest first."""
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys("default").events))
    return [
        (int(entry_id.split("-")[0]), fields)
        for entry_id, fields in entries
        if fields["job"] == job_id and fields["event"] == name
    ]


@task(name="worker.flaky", retries=2, backoff=0.2)
def flaky(job: Job) -> int:
    if job.attempt < 3:
        raise RuntimeError(f"attempt {job.attempt} fails")
    return job.attempt


@task(name="worker.broken", retries=1, backoff=0)
def broken(x: int) -> None:
    raise ValueError(f"cannot handle {x}")


@task(name="worker.asks_retry", retries=1, backoff=60)
def asks_retry(job: Job) -> str:
    if job.attempt == 1:
        raise Retry(delay=0.3)
    return "second time lucky"


@task(name="worker.gives_up", retries=3, backoff=0)
def gives_up() -> None:
    raise Unrecoverable("the input can never work")


@task(name="worker.slow_async", timeout=0.2)
async def slow_async() -> None:
    await asyncio.sleep(10)


@task(name="worker.echo")
def echo(value: str) -> str:
    return value


def test_failing_task_is_retried_with_backoff_until_it_succeeds(
    taskmesh_client: Client, taskmesh_drain: Drain, taskmesh_worker: StartWorker
) -> None:
    handle = flaky.enqueue()
    stats = taskmesh_drain([flaky])
    status = handle.status()
    assert (stats.retried, stats.failed) == (1, 0)
    assert (status.state, status.attempts) == (JobState.DELAYED, 1), "a burst drain leaves a backed-off retry alone"
    [(failed_at, _)] = events(taskmesh_client, handle.id, "retrying")
    assert status.due_at is not None
    assert status.due_at.timestamp() * 1000 - failed_at >= 190

    taskmesh_worker([flaky], idle_timeout=30)  # each retry must be picked up when due, not at the idle timeout
    assert handle.result(timeout=4) == 3
    assert handle.status().attempts == 3
    retrying = events(taskmesh_client, handle.id, "retrying")
    active = events(taskmesh_client, handle.id, "active")
    assert [(f["attempt"], f["delay"]) for _, f in retrying] == [("1", "200"), ("2", "200")]
    assert [f["attempt"] for _, f in active] == ["1", "2", "3"]
    for (retried_at, _), (next_start, _) in zip(retrying, active[1:], strict=True):
        assert next_start - retried_at >= 190


def test_exhausted_retries_fail_with_type_message_and_traceback(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = broken.enqueue(7)
    with pytest.raises(JobFailed) as info:
        taskmesh_drain([broken])
    assert info.value.job_id == handle.id
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.FAILED, 2)
    assert status.error is not None
    assert status.error["type"] == "ValueError"
    assert status.error["message"] == "cannot handle 7"
    assert "Traceback" in status.error["traceback"] and "in broken" in status.error["traceback"]


def test_retry_raised_by_task_runs_again_after_its_delay(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    handle = asks_retry.enqueue()
    taskmesh_worker([asks_retry], idle_timeout=30)
    assert handle.result(timeout=4) == "second time lucky"
    [(retried_at, retrying)] = events(taskmesh_client, handle.id, "retrying")
    assert retrying["delay"] == "300", "Retry(delay=...) wins over the task's backoff"
    (next_start, _) = events(taskmesh_client, handle.id, "active")[1]
    assert next_start - retried_at >= 290


def test_unrecoverable_fails_at_once_despite_retries(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = gives_up.enqueue()
    with pytest.raises(JobFailed):
        taskmesh_drain([gives_up])
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.FAILED, 1)
    assert status.error is not None and status.error["type"] == "Unrecoverable"
    assert events(taskmesh_client, handle.id, "retrying") == []


def test_async_task_past_its_timeout_fails(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = slow_async.enqueue()
    started = time.monotonic()
    with pytest.raises(JobFailed) as info:
        taskmesh_drain([slow_async])
    assert time.monotonic() - started < 5
    assert "timeout" in info.value.error["message"]
    assert handle.status().state is JobState.FAILED


def test_delayed_job_does_not_run_before_it_is_due(
    taskmesh_client: Client, taskmesh_drain: Drain, taskmesh_worker: StartWorker
) -> None:
    handle = echo.options(delay=0.6).enqueue("later")
    stats = taskmesh_drain([echo])
    assert stats.leased == 0
    assert handle.status().state is JobState.DELAYED

    taskmesh_worker([echo])
    assert handle.result(timeout=4) == "later"
    status = handle.status()
    assert status.started_at is not None and status.due_at is None
    [(delayed_at, delayed)] = events(taskmesh_client, handle.id, "delayed")
    assert status.started_at.timestamp() * 1000 >= int(delayed["due"]) >= delayed_at + 590


def test_run_at_in_the_past_runs_now(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = echo.options(run_at=datetime.now(UTC) - timedelta(hours=1)).enqueue("now")
    assert handle.status().state is JobState.WAITING
    taskmesh_drain([echo])
    assert handle.result(timeout=1) == "now"


def test_bad_payloads_and_unknown_tasks_fail_and_the_worker_goes_on(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    payloads = taskmesh_client.keys("default").payloads
    not_json, missing_keys = echo.enqueue("a"), echo.enqueue("b")
    taskmesh_client.redis.hset(payloads, not_json.id, "not json")
    taskmesh_client.redis.hset(payloads, missing_keys.id, '{"t": "worker.echo"}')
    unknown = taskmesh_client.enqueue("worker.nobody_knows", 1)

    running = taskmesh_worker([echo])
    for handle in (not_json, missing_keys):
        with pytest.raises(JobFailed) as info:
            handle.result(timeout=4)
        assert info.value.error["type"] == "PayloadError"
        assert f"malformed payload for job {handle.id}" in info.value.error["message"]
    with pytest.raises(JobFailed) as info:
        unknown.result(timeout=4)
    assert info.value.error["type"] == "UnknownTaskError"
    assert "'worker.nobody_knows'" in info.value.error["message"]
    assert "known: worker.echo" in info.value.error["message"]

    assert echo.enqueue("fine").result(timeout=4) == "fine"
    assert running.error is None


def test_stopping_worker_lets_a_running_job_finish_and_leases_no_more(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    gate = threading.Event()

    @task(name="worker.gated")
    def gated() -> str:
        if not gate.wait(10):
            raise TimeoutError("gate never opened")
        return "finished"

    running = taskmesh_worker([gated], grace_period=10)
    handle = gated.enqueue()
    wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=5, message="job active")
    running.worker.stop()
    later = gated.enqueue()
    gate.set()
    stats = running.stop(timeout=5)
    assert handle.status().state is JobState.COMPLETED
    assert later.status().state is JobState.WAITING
    assert (stats.completed, stats.released) == (1, 0)


def test_job_still_running_after_the_grace_period_is_handed_back(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    @task(name="worker.endless")
    async def endless() -> None:
        await asyncio.sleep(30)

    running = taskmesh_worker([endless], grace_period=0.1)
    handle = endless.enqueue()
    wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=5, message="job active")
    stats = running.stop(timeout=5)
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.WAITING, 0)
    assert len(events(taskmesh_client, handle.id, "released")) == 1
    assert stats.released == 1


def test_job_handed_back_is_taken_at_once_by_an_idle_worker(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    runs: list[int] = []

    @task(name="worker.slow_first_time")
    async def slow_first_time() -> int:
        runs.append(1)
        if len(runs) == 1:
            await asyncio.sleep(30)
        return len(runs)

    stopping = taskmesh_worker([slow_first_time], grace_period=0.1)
    handle = slow_first_time.enqueue()
    wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=5, message="job active")
    taskmesh_worker([slow_first_time], idle_timeout=30)
    stopping.stop(timeout=5)
    started = time.monotonic()
    assert handle.result(timeout=4) == 2
    assert time.monotonic() - started < 1.0
    assert handle.status().attempts == 1


def test_idle_worker_is_woken_by_enqueue(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    taskmesh_worker([echo], idle_timeout=30)
    assert echo.enqueue("warm-up").result(timeout=4) == "warm-up"
    wait_until(
        lambda: any(c.get("cmd") in ("blpop", "blmove") for c in taskmesh_client.redis.client_list()),
        timeout=5,
        message="worker blocked waiting for work",
    )
    started = time.monotonic()
    assert echo.enqueue("wake").result(timeout=4) == "wake"
    assert time.monotonic() - started < 1.0


@task(name="worker.chatty")
async def chatty(job: Job, n: int) -> int:
    for step in range(3):
        job.progress(step * 30)
        await asyncio.sleep(0)
    return n


def test_burst_drain_runs_every_job_when_progress_flushes_interleave(
    taskmesh_client: Client, taskmesh_drain: Any
) -> None:
    handles = taskmesh_client.enqueue_many([chatty.call(i) for i in range(300)])
    stats = taskmesh_drain([chatty], concurrency=4)
    assert stats.completed == 300
    assert [h.result(timeout=1) for h in handles] == list(range(300))


def test_worker_takes_its_queues_in_order_of_preference(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    order: list[str] = []

    @task(name="worker.record")
    def record(label: str) -> None:
        order.append(label)

    taskmesh_client.enqueue_many([record.options(queue="low").call(f"low{i}") for i in range(3)])
    taskmesh_client.enqueue_many([record.options(queue="high").call(f"high{i}") for i in range(3)])
    taskmesh_drain([record], queues=["high", "low"], concurrency=1)
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]


@task(name="worker.elsewhere", queue="elsewhere")
def elsewhere() -> None: ...


def test_delayed_job_runs_on_time_on_a_worker_with_two_queues(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    taskmesh_worker([echo, elsewhere], idle_timeout=30)
    for _ in range(10):
        assert echo.enqueue("now").result(timeout=4) == "now"
        started = time.monotonic()
        assert echo.options(delay=0.2).enqueue("later").result(timeout=4) == "later"
        assert time.monotonic() - started < 2.0
