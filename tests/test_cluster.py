"""taskmesh on a 3-master Redis Cluster: queues on different nodes, one worker for all, the CLI.

The engine, event and smoke tests also run against this cluster (``pytestmark = pytest.mark.also_cluster``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import Cluster

from taskmesh import (
    Call,
    Client,
    ConfigurationError,
    Job,
    JobFailed,
    JobState,
    RedisUnavailable,
    Registry,
    Retry,
    Worker,
    task,
)
from taskmesh.embedded import free_port
from taskmesh.store import scripts
from taskmesh.store.keys import QueueKeys, queues_key
from taskmesh.testing import running_worker

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}


@task(name="cluster.echo")
def echo(value: object) -> object:
    return value


@task(name="cluster.flaky", retries=1, backoff=0.2)
def flaky(job: Job) -> int:
    if job.attempt == 1:
        raise Retry(reason="the first attempt asks for another")
    return job.attempt


@task(name="cluster.boom", retries=0)
def boom() -> None:
    raise RuntimeError("boom")


def node_of(cluster: Cluster, key: str) -> int:
    """The port of the master that owns ``key``'s slot."""
    with cluster.nodes[0].client() as conn:
        slot = int(conn.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in conn.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(f"no node owns the slot of {key}")


def spread_queues(cluster: Cluster, prefix: str) -> list[str]:
    """One queue name per master: their keys live on three different nodes."""
    found: dict[int, str] = {}
    for n in range(200):
        name = f"q{n}"
        found.setdefault(node_of(cluster, QueueKeys.of(prefix, name).jobs), name)
        if len(found) == len(cluster.nodes):
            return list(found.values())
    raise AssertionError("no queue names spread over every node")


@pytest.fixture
def client(redis_cluster: Cluster) -> Iterator[Client]:
    client = Client(redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    yield client
    client.close()


def test_one_worker_runs_queues_that_live_on_three_nodes(redis_cluster: Cluster, client: Client) -> None:
    queues = spread_queues(redis_cluster, client.settings.prefix)
    slots = {redis.cluster.key_slot(QueueKeys.of(client.settings.prefix, q).jobs.encode()) for q in queues}
    assert len(slots) == 3
    assert node_of(redis_cluster, queues_key(client.settings.prefix)) > 0  # the registry lives in its own slot

    handles = client.enqueue_many([Call("cluster.echo", [q], queue=q) for q in queues])
    with running_worker(client, [echo], queues=queues, idle_timeout=5, **FAST):
        assert [h.result(timeout=10) for h in handles] == queues
        # Idle now: a job in any queue wakes the worker at once, not after idle_timeout.
        for queue in reversed(queues):
            enqueued = time.monotonic()
            handle = client.submit(Call("cluster.echo", [queue], queue=queue))
            assert handle.result(timeout=10) == queue
            assert time.monotonic() - enqueued < 2
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3
    assert sorted(client.queues()) == sorted(queues)
    for queue in queues:
        assert client.counts(queue)["completed"] == 2


def test_retries_delays_failures_and_async_producers_on_a_cluster(client: Client) -> None:
    async def produce() -> list[str]:
        handles = [
            await client.aenqueue(flaky),
            await client.asubmit(Call("cluster.echo", ["later"], delay=0.5)),
            await client.aenqueue(boom),
        ]
        await client.aclose()
        return [h.id for h in handles]

    retried, delayed, failed = asyncio.run(produce())
    assert client.status(delayed).state is JobState.DELAYED
    with running_worker(client, [flaky, echo, boom], queues=["default"], idle_timeout=1, **FAST):
        assert client.job(retried).result(timeout=10) == 2
        assert client.job(delayed).result(timeout=10) == "later"
        with pytest.raises(JobFailed, match="boom"):
            client.job(failed).result(timeout=10)
    events = [e.name for e in client.events(["default"], since="0", timeout=0) if e.job_id == retried]
    assert events == ["enqueued", "active", "retrying", "waiting", "active", "completed"]


def test_the_job_of_a_vanished_worker_is_recovered_by_another(client: Client) -> None:
    handle = client.enqueue("cluster.echo", "recovered")
    # A lease taken by a worker that then vanishes: the step script called directly, never renewed.
    args = scripts.step_args(client.settings.replace(lease_seconds=0.2, renew_interval=0.1), "vanished", 1, [])
    scripts.call(client.redis, "step", client.keys("default").all, args)
    assert handle.status().state is JobState.ACTIVE
    with running_worker(client, [echo], queues=["default"], idle_timeout=1, **FAST):
        assert handle.result(timeout=10) == "recovered"
    assert handle.status().stalls == 1


def test_worker_refuses_a_cluster_where_one_master_evicts_keys(redis_cluster: Cluster, client: Client) -> None:
    with redis_cluster.nodes[-1].client() as conn:
        conn.config_set("maxmemory-policy", "allkeys-lru")
        try:
            worker = Worker.create(Registry(), client.settings, burst=True, entry_points=False)
            with pytest.raises(ConfigurationError, match="allkeys-lru"):
                asyncio.run(worker.run())
        finally:
            conn.config_set("maxmemory-policy", "noeviction")


def test_cli_reports_queues_of_a_cluster(redis_cluster: Cluster, client: Client, tmp_path: Path) -> None:
    client.enqueue("cluster.echo", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMESH_")}
    command = ["queues", "--redis-url", redis_cluster.url, "--prefix", client.settings.prefix]
    result = subprocess.run(
        [sys.executable, "-m", "taskmesh", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout


def test_enqueue_to_an_unreachable_cluster_raises_redis_unavailable() -> None:
    client = Client(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", prefix="unreachable")
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="cannot reach Redis at redis\\+cluster://"):
        client.enqueue(echo, 1)
    with pytest.raises(RedisUnavailable):
        asyncio.run(client.aenqueue(echo, 1))
    assert time.monotonic() - started < 2
