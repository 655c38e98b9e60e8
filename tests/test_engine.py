"""The Lua state machine, driven script by script: fencing, renewals, stalled recovery, order, dedupe, retention.

Script-level tests call the scripts directly so that one test can play two lease holders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

import pytest

from taskmesh import Client, JobState, Settings, WorkerStats, task
from taskmesh.store import scripts
from taskmesh.store.keys import claim_key
from taskmesh.store.scripts import Leased, Update
from taskmesh.testing import wait_until

pytestmark = pytest.mark.also_cluster  # also run against a Redis Cluster (tests/conftest.py)

TASK = "engine.noop"


def step(
    client: Client, settings: Settings, worker: str, want: int = 1, updates: list[Update] | None = None
) -> tuple[list[bool], list[Leased]]:
    """One ``step`` call as worker ``worker``: apply ``updates``, lease up to ``want`` jobs."""
    args = scripts.step_args(settings, worker, want, updates or [])
    accepted, leased, _ = scripts.parse_step(scripts.call(client.redis, "step", client.keys("default").all, args))
    return accepted, leased


def sweep(client: Client, settings: Settings) -> tuple[list[str], list[str]]:
    recovered, lost = scripts.call(client.redis, "sweep", client.keys("default").all, scripts.sweep_args(settings))
    return list(recovered), list(lost)


def swept(client: Client, settings: Settings) -> tuple[list[str], list[str]]:
    """Sweep until the (short) lease has expired and the sweep acted on it."""
    outcome: tuple[list[str], list[str]] = ([], [])

    def acted() -> bool:
        nonlocal outcome
        outcome = sweep(client, settings)
        return bool(outcome[0] or outcome[1])

    wait_until(acted, timeout=5, message="expired lease swept")
    return outcome


def events(client: Client, name: str | None = None) -> list[dict[str, str]]:
    """The queue's event stream, oldest first (optionally one event name only)."""
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys("default").events))
    return [fields for _, fields in entries if name is None or fields["event"] == name]


def short_lease(client: Client, **changes: object) -> Settings:
    return client.settings.replace(lease_seconds=0.05, renew_interval=0.01, **changes)


def test_stale_holder_cannot_report_or_complete_job(taskmesh_client: Client) -> None:
    cfg = short_lease(taskmesh_client)
    handle = taskmesh_client.enqueue(TASK)
    _, [first] = step(taskmesh_client, cfg, "w1")
    assert swept(taskmesh_client, cfg) == ([handle.id], [])
    _, [second] = step(taskmesh_client, cfg, "w2")
    assert second.id == handle.id
    assert second.token != first.token
    assert second.attempt == 1, "a stalled attempt is not spent"
    before = handle.status()

    stale = [
        Update("p", handle.id, first.token, "50"),
        Update("l", handle.id, first.token, "stale line"),
        Update("c", handle.id, first.token, '"stale result"'),
        Update("f", handle.id, first.token, '{"type": "E"}', 0, 5),
    ]
    accepted, _ = step(taskmesh_client, cfg, "w1", 0, stale)
    assert accepted == [False, False, False, False]
    after = handle.status()
    assert after == before
    assert (after.state, after.result, after.progress, after.logs, after.worker) == (
        JobState.ACTIVE,
        None,
        None,
        [],
        "w2",
    )

    accepted, _ = step(taskmesh_client, cfg, "w2", 0, [Update("c", handle.id, second.token, '"fresh"')])
    assert accepted == [True]
    accepted, _ = step(taskmesh_client, cfg, "w1", 0, [Update("c", handle.id, first.token, '"late"')])
    assert accepted == [False]
    assert handle.result(timeout=1) == "fresh"
    assert len(events(taskmesh_client, "completed")) == 1


def test_renew_extends_only_the_holders_lease(taskmesh_client: Client) -> None:
    cfg = taskmesh_client.settings.replace(lease_seconds=5)
    a, b = (taskmesh_client.enqueue(TASK) for _ in range(2))
    _, leased = step(taskmesh_client, cfg, "w1", 2)
    tokens = {job.id: job.token for job in leased}
    active = taskmesh_client.keys("default").active
    deadline_a, deadline_b = (taskmesh_client.redis.zscore(active, job) for job in (a.id, b.id))

    longer = cfg.replace(lease_seconds=60)
    held = [(a.id, tokens[a.id]), (b.id, tokens[b.id] + 1000)]
    keys = taskmesh_client.keys("default").all
    lost, cancel = scripts.parse_renew(
        scripts.call(taskmesh_client.redis, "renew", keys, scripts.renew_args(longer, held))
    )

    assert (lost, cancel) == ([b.id], [])
    new_a = taskmesh_client.redis.zscore(active, a.id)
    assert new_a is not None and deadline_a is not None and new_a >= deadline_a + 50_000
    assert taskmesh_client.redis.zscore(active, b.id) == deadline_b


def test_renew_reports_a_finished_job_as_lost(taskmesh_client: Client) -> None:
    cfg = taskmesh_client.settings
    handle = taskmesh_client.enqueue(TASK)
    _, [job] = step(taskmesh_client, cfg, "w1")
    step(taskmesh_client, cfg, "w1", 0, [Update("c", job.id, job.token, "1")])
    args = scripts.renew_args(cfg, [(job.id, job.token)])
    result = scripts.call(taskmesh_client.redis, "renew", taskmesh_client.keys("default").all, args)
    assert scripts.parse_renew(result) == ([handle.id], [])
    assert taskmesh_client.redis.zscore(taskmesh_client.keys("default").active, handle.id) is None


def test_stalled_job_is_counted_then_fails_as_worker_lost(taskmesh_client: Client) -> None:
    cfg = short_lease(taskmesh_client, max_stalls=1)
    handle = taskmesh_client.enqueue(TASK)
    step(taskmesh_client, cfg, "w1")
    assert swept(taskmesh_client, cfg) == ([handle.id], [])
    status = handle.status()
    assert (status.state, status.stalls, status.attempts) == (JobState.WAITING, 1, 0)
    assert [e["stalls"] for e in events(taskmesh_client, "stalled")] == ["1"]

    step(taskmesh_client, cfg, "w2")
    assert swept(taskmesh_client, cfg) == ([], [handle.id])
    status = handle.status()
    assert (status.state, status.stalls) == (JobState.FAILED, 2)
    assert status.error is not None
    assert status.error["type"] == "WorkerLost"
    assert "worker lost" in status.error["message"]
    [failed] = events(taskmesh_client, "failed")
    assert failed["reason"] == "worker lost"
    assert taskmesh_client.counts()["active"] == 0


def test_job_id_dedupes_while_queued_and_after_completion(
    taskmesh_client: Client, taskmesh_drain: Callable[..., WorkerStats]
) -> None:
    first = echo.options(job_id="order-1").enqueue("first")
    second = echo.options(job_id="order-1").enqueue("second")
    assert (first.created, second.created, second.id) == (True, False, "order-1")
    assert taskmesh_client.counts()["waiting"] == 1

    taskmesh_drain([echo])
    again = echo.options(job_id="order-1").enqueue("third")
    assert again.created is False
    assert again.status().state is JobState.COMPLETED
    assert again.result(timeout=1) == "first"
    assert len(events(taskmesh_client, "enqueued")) == 1


order: list[str] = []


@task(name="engine.record")
def record(label: str) -> None:
    order.append(label)


@task(name="engine.echo")
def echo(value: str) -> str:
    return value


def test_higher_priority_runs_first_and_fifo_within_a_priority(
    taskmesh_client: Client, taskmesh_drain: Callable[..., WorkerStats]
) -> None:
    order.clear()
    plan = [("low-1", -1), ("mid-1", 0), ("high-1", 5), ("mid-2", 0), ("high-2", 5), ("low-2", -1), ("mid-3", 0)]
    taskmesh_client.enqueue_many(record.options(priority=prio).call(label) for label, prio in plan)
    taskmesh_drain([record], concurrency=1)
    assert order == ["high-1", "high-2", "mid-1", "mid-2", "mid-3", "low-1", "low-2"]


def test_completed_retention_keeps_only_the_most_recent(
    taskmesh_client: Client, taskmesh_drain: Callable[..., WorkerStats]
) -> None:
    ids = [f"job-{i}" for i in range(5)]
    taskmesh_client.enqueue_many(echo.options(job_id=job_id).call(job_id) for job_id in ids)
    taskmesh_drain([echo], concurrency=1, completed_keep=2)
    keys = taskmesh_client.keys("default")
    assert sorted(taskmesh_client.redis.hkeys(keys.jobs)) == ids[-2:]
    assert sorted(taskmesh_client.redis.hkeys(keys.payloads)) == ids[-2:]
    assert taskmesh_client.counts()["completed"] == 2
    assert taskmesh_client.status("job-0") is None


def test_failed_attempt_with_attempts_left_is_delayed_then_fails_when_spent(taskmesh_client: Client) -> None:
    cfg = taskmesh_client.settings
    handle = taskmesh_client.enqueue(TASK)
    _, [job] = step(taskmesh_client, cfg, "w1")
    error = json.dumps({"type": "ValueError", "message": "bad", "traceback": "tb"})
    step(taskmesh_client, cfg, "w1", 0, [Update("f", job.id, job.token, error, 60_000, 2)])
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.DELAYED, 1)
    [retrying] = events(taskmesh_client, "retrying")
    assert (retrying["attempt"], retrying["delay"]) == ("1", "60000")
    assert status.due_at is not None and status.started_at is not None
    assert 59 < (status.due_at - status.started_at).total_seconds() < 61
    assert step(taskmesh_client, cfg, "w1")[1] == [], "a delayed retry is not leased before it is due"

    taskmesh_client.redis.zadd(taskmesh_client.keys("default").delayed, {handle.id: 0})  # make it due now
    _, [job] = step(taskmesh_client, cfg, "w1")
    assert job.attempt == 2
    step(taskmesh_client, cfg, "w1", 0, [Update("f", job.id, job.token, error, 60_000, 2)])
    status = handle.status()
    assert (status.state, status.attempts, status.error) == (
        JobState.FAILED,
        2,
        {"type": "ValueError", "message": "bad", "traceback": "tb"},
    )


def test_a_step_gated_by_a_claim_list_leases_only_with_a_claim(taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("engine.anything")
    keys = taskmesh_client.keys("default")
    claim = claim_key(keys, "w1")
    args = scripts.step_args(taskmesh_client.settings, "w1", 1, [])

    _, without, _ = scripts.parse_step(scripts.call(taskmesh_client.redis, "step", (*keys.all, claim), args))
    taskmesh_client.redis.rpush(claim, "1")
    _, with_claim, _ = scripts.parse_step(scripts.call(taskmesh_client.redis, "step", (*keys.all, claim), args))

    assert (without, [job.id for job in with_claim]) == ([], [handle.id])
    assert taskmesh_client.redis.llen(claim) == 0
