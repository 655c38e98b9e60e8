"""Large batches and retention under load: scripts handle any batch size and keep finished jobs bounded."""

from __future__ import annotations

from collections.abc import Callable

from taskmesh import Client, WorkerStats, task
from taskmesh.store import scripts
from taskmesh.store.scripts import Update

Drain = Callable[..., WorkerStats]


@task(name="limits.noop")
def noop(n: int) -> None:
    return None


def stored(client: Client) -> tuple[int, int, int]:
    """(completed zset size, job records, payloads) of the default queue."""
    keys = client.keys("default")
    return (
        int(client.redis.zcard(keys.completed)),
        int(client.redis.hlen(keys.jobs)),
        int(client.redis.hlen(keys.payloads)),
    )


def test_completed_retention_holds_under_concurrent_load(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    taskmesh_client.enqueue_many([noop.call(i) for i in range(2000)])
    stats = taskmesh_drain([noop], concurrency=100, completed_keep=50)
    assert stats.completed == 2000
    # Each step removes up to twice what it finished, so the excess never builds up.
    assert stored(taskmesh_client) == (50, 50, 50)


def test_enqueue_many_accepts_ten_thousand_jobs_in_one_call(taskmesh_client: Client) -> None:
    handles = taskmesh_client.enqueue_many([noop.call(i) for i in range(10_000)])
    assert len({h.id for h in handles}) == 10_000
    assert taskmesh_client.counts()["waiting"] == 10_000


def test_one_step_leases_and_completes_ten_thousand_jobs(taskmesh_client: Client) -> None:
    taskmesh_client.enqueue_many([noop.call(i) for i in range(10_000)])
    cfg = taskmesh_client.settings.replace(completed_keep=50)
    keys = taskmesh_client.keys("default").all

    reply = scripts.call(taskmesh_client.redis, "step", keys, scripts.step_args(cfg, "w1", 10_000, []))
    _, leased, _ = scripts.parse_step(reply)
    assert len(leased) == 10_000
    assert all(job.payload for job in leased)

    done = [Update("c", job.id, job.token, "null") for job in leased]
    reply = scripts.call(taskmesh_client.redis, "step", keys, scripts.step_args(cfg, "w1", 0, done))
    accepted, _, _ = scripts.parse_step(reply)
    assert all(accepted)
    assert stored(taskmesh_client) == (50, 50, 50)
