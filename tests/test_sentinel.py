"""Sentinel: a producer and a worker on ``redis+sentinel://`` follow the master through a failover."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import Server, sentinel_server, started, until

from taskmesh import Client, JobHandle, RedisUnavailable, task
from taskmesh.embedded import free_port
from taskmesh.testing import running_worker, wait_until

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}
FAILOVER_BOUND = 20.0


@task(name="sentinel.echo")
def echo(value: int) -> int:
    return value


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Server]]:
    """A master, its replica and one Sentinel (quorum 1, master down after 1 s)."""
    # No 5 s wait for more replicas before the first sync (repl-diskless-sync-delay).
    master = Server(tmp_path / "master", "--appendonly", "yes", "--repl-diskless-sync-delay", "0")
    replica = Server(tmp_path / "replica", "--appendonly", "yes")
    with started(master):
        replica.args += ("--replicaof", "127.0.0.1", str(master.port))
        sentinel = sentinel_server(tmp_path / "sentinel", master.port)
        with started(replica, sentinel):
            with sentinel.client() as conn:

                def replica_known() -> bool:
                    replicas = conn.sentinel_slaves("mymaster")
                    return any(r["port"] == replica.port and r["master-link-status"] == "ok" for r in replicas)

                until(replica_known, timeout=15, message="the Sentinel knows the synced replica")
            yield {"master": master, "replica": replica, "sentinel": sentinel}


def enqueued_once_reachable(enqueue: Callable[[], JobHandle[Any]], timeout: float) -> JobHandle[Any]:
    """Retry ``enqueue`` while it raises RedisUnavailable (the failover is under way), bounded."""

    def attempt() -> JobHandle[Any] | None:
        try:
            return enqueue()
        except RedisUnavailable:
            return None

    handle: JobHandle[Any] = wait_until(attempt, timeout=timeout, interval=0.05, message="enqueue after the failover")
    return handle


def test_producer_and_worker_follow_the_new_master_after_the_old_one_is_killed(
    deployment: dict[str, Server], caplog: pytest.LogCaptureFixture, record_property: Callable[[str, object], None]
) -> None:
    caplog.set_level(logging.WARNING, logger="taskmesh")
    master, replica, sentinel = deployment["master"], deployment["replica"], deployment["sentinel"]
    # The first Sentinel listed is down: the client asks the next one.
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel.port}/mymaster"
    client = Client(url, prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        with running_worker(client, [echo], **FAST) as running:
            assert client.enqueue(echo, 1).result(timeout=10) == 1

            master.kill()
            killed = time.monotonic()
            handle = enqueued_once_reachable(lambda: client.enqueue(echo, 2), FAILOVER_BOUND)
            failover = time.monotonic() - killed
            assert handle.result(timeout=15) == 2  # the worker followed too
            resumed = time.monotonic() - killed

            later = asyncio.run(client.aenqueue(echo, 3))
            assert later.result(timeout=10) == 3
            assert running.stats is None and running.error is None  # the worker never stopped
        with sentinel.client() as conn:
            assert int(conn.sentinel_get_master_addr_by_name("mymaster")[1]) == replica.port
        assert "redis unreachable" in caplog.text  # it did lose the old master on the way
    finally:
        client.close()
    record_property("failover_seconds", round(failover, 2))
    record_property("worker_resumed_seconds", round(resumed, 2))
    print(f"failover: producer enqueued after {failover:.2f}s, job done {resumed:.2f}s after the kill")
