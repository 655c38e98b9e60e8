"""A running worker survives Redis going away: it retries with backoff, resumes, and still stops on time."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import cast

import pytest

from taskmesh import Client, JobState, RedisUnavailable, task
from taskmesh.embedded import EmbeddedRedis
from taskmesh.testing import RunningWorker, running_worker, wait_until

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}
gate = threading.Event()


@task(name="restart.echo")
def echo(value: int) -> int:
    return value


@task(name="restart.gated")
def gated() -> str:
    gate.wait(20)
    return "released"


@pytest.fixture
def server(aof_server: EmbeddedRedis) -> EmbeddedRedis:
    return aof_server


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[Client]:
    client = Client(server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    yield client
    client.close()


@pytest.fixture(autouse=True)
def open_gate() -> Iterator[None]:
    gate.clear()
    yield
    gate.set()  # never leave a task thread blocked


@pytest.fixture(autouse=True)
def worker_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="taskmesh")
    return caplog


def wait_for_retries(caplog: pytest.LogCaptureFixture) -> None:
    """Wait until the worker has found Redis unreachable and is retrying."""
    wait_until(lambda: "redis unreachable" in caplog.text, timeout=5, message="worker retrying the connection")


def still_running(running: RunningWorker) -> bool:
    return running.stats is None and running.error is None


def job_events(client: Client, job_id: str) -> list[str]:
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys("default").events))
    return [fields["event"] for _, fields in entries if fields["job"] == job_id]


def test_idle_worker_resumes_after_redis_restarts(
    server: EmbeddedRedis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with running_worker(client, [echo], **FAST) as running:
        server.stop()
        wait_for_retries(caplog)
        server.start()
        handle = client.enqueue(echo, 7)
        assert handle.result(timeout=10) == 7
        assert still_running(running)
    assert running.stats is not None and running.stats.completed == 1


def test_job_running_across_a_redis_restart_completes_once(
    server: EmbeddedRedis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {**FAST, "lease_seconds": 3.0}  # Redis is down for less than a lease: the job must not stall
    with running_worker(client, [gated], **settings) as running:
        handle = client.enqueue(gated)
        wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=5, message="job active")
        server.stop()
        wait_for_retries(caplog)
        server.start()
        gate.set()
        assert handle.result(timeout=10) == "released"
        assert still_running(running)
    status = handle.status()
    assert (status.attempts, status.stalls, status.result) == (1, 0, "released")
    assert job_events(client, handle.id).count("completed") == 1
    assert running.stats is not None and (running.stats.completed, running.stats.refused) == (1, 0)


def test_jobs_enqueued_before_redis_is_killed_run_after_it_restarts(
    server: EmbeddedRedis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with running_worker(client, [echo], **FAST) as running:
        handles = [echo.options(delay=1.0, client=client).enqueue(n) for n in range(5)]
        assert server.process is not None
        server.process.kill()
        server.process.wait(5)
        server.stop()  # forgets the killed process
        wait_for_retries(caplog)
        server.start()
        assert [h.result(timeout=10) for h in handles] == list(range(5))
        assert still_running(running)
    for handle in handles:
        assert job_events(client, handle.id).count("completed") == 1


def test_worker_stopped_while_redis_is_down_returns_after_the_grace_period(
    server: EmbeddedRedis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    grace = 0.5
    with running_worker(client, [gated], **FAST, grace_period=grace) as first:
        handle = client.enqueue(gated)
        wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=5, message="job active")
        server.stop()
        wait_for_retries(caplog)
        stopping = time.monotonic()
        first.stop(timeout=15)
        assert time.monotonic() - stopping < grace + 1.5
        assert "giving up" in caplog.text

    # The hand-back could not be reported: the job stays leased until its lease expires, then another worker runs it.
    server.start()
    with running_worker(client, [gated], **FAST):
        gate.set()
        assert handle.result(timeout=10) == "released"
    status = handle.status()
    assert (status.attempts, status.stalls) == (1, 1)
    assert job_events(client, handle.id).count("completed") == 1


def test_thirty_seconds_without_redis_lose_nothing(
    server: EmbeddedRedis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis is away for 30 s: every enqueue fails fast with RedisUnavailable, the worker keeps running
    the job it holds (which finishes meanwhile), then reports it and runs what was waiting."""
    with running_worker(client, [gated, echo], **FAST, concurrency=1) as running:
        held = client.enqueue(gated)
        wait_until(lambda: held.status().state is JobState.ACTIVE, timeout=5, message="job active")
        waiting = [client.enqueue(echo, n) for n in range(5)]
        server.stop()
        down_at = time.monotonic()
        attempts, slowest = 0, 0.0
        while time.monotonic() - down_at < 30:
            began = time.monotonic()
            with pytest.raises(RedisUnavailable):
                client.enqueue(echo, 99)
            slowest = max(slowest, time.monotonic() - began)
            attempts += 1
            if time.monotonic() - down_at > 5:
                gate.set()  # the held job finishes while Redis is away; its outcome waits in the worker
            assert still_running(running)
            time.sleep(0.5)  # the pace of the producer's attempts, not a synchronisation
        server.start()
        assert held.result(timeout=15) == "released"
        assert [h.result(timeout=15) for h in waiting] == list(range(5))
        assert still_running(running)
    assert attempts >= 30 and slowest < 1.0, (attempts, slowest)
    for handle in (held, *waiting):
        assert job_events(client, handle.id).count("completed") == 1
    assert client.counts()["completed"] == 6, "no enqueue that failed during the outage left a job behind"
