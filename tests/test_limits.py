"""Large batches and retention under load: scripts handle any batch size and keep finished jobs bounded.
A rate window includes both its ends, to the millisecond.
Stored limits that cannot be read: reported, never in the way of the others, removable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

import pytest

from taskmesh import Client, Limit, Settings, WorkerStats, task
from taskmesh.store import connect, scripts
from taskmesh.store.scripts import Leased, Update

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


def kept(client: Client) -> tuple[set[str], set[str], set[str]]:
    """(ids in the completed set, ids with a record, ids with a payload) of the default queue."""
    keys = client.keys("default")
    return (
        {str(i) for i in client.redis.zrange(keys.completed, 0, -1)},
        {str(i) for i in client.redis.hkeys(keys.jobs)},
        {str(i) for i in client.redis.hkeys(keys.payloads)},
    )


def step(client: Client, cfg: Settings, want: int, updates: list[Update]) -> list[Leased]:
    reply = scripts.call(client.redis, "step", client.keys("default").all, scripts.step_args(cfg, "w1", want, updates))
    accepted, leased, _ = scripts.parse_step(reply)
    assert all(accepted)
    return leased


def completed_an_hour_ago(client: Client, count: int) -> set[str]:
    """Complete ``count`` jobs and move their finish time an hour back; returns their ids."""
    cfg = client.settings
    client.enqueue_many([noop.call(-1) for _ in range(count)])
    leased = step(client, cfg, count, [])
    step(client, cfg, 0, [Update("c", job.id, job.token, "null") for job in leased])
    completed = client.keys("default").completed
    finished = cast(list[tuple[str, float]], client.redis.zrange(completed, 0, -1, withscores=True))
    client.redis.zadd(completed, {job_id: score - 3_600_000 for job_id, score in finished}, xx=True)
    return {job.id for job in leased}


def test_completed_retention_holds_under_concurrent_load(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    older = completed_an_hour_ago(taskmesh_client, 50)
    newer = {h.id for h in taskmesh_client.enqueue_many([noop.call(i) for i in range(2000)])}
    stats = taskmesh_drain([noop], concurrency=100, completed_keep=50)
    assert stats.completed == 2000
    # Each step removes up to twice what it finished, so the excess never builds up; the oldest go first,
    # records and payloads with them.
    assert stored(taskmesh_client) == (50, 50, 50)
    ids, records, payloads = kept(taskmesh_client)
    assert ids <= newer, f"{len(ids & older)} of the jobs completed an hour before were kept over newer ones"
    assert records == payloads == ids


def test_enqueue_many_accepts_ten_thousand_jobs_in_one_call(taskmesh_client: Client) -> None:
    handles = taskmesh_client.enqueue_many([noop.call(i) for i in range(10_000)])
    assert len({h.id for h in handles}) == 10_000
    assert taskmesh_client.counts()["waiting"] == 10_000


def test_one_step_leases_and_completes_ten_thousand_jobs(taskmesh_client: Client) -> None:
    older = completed_an_hour_ago(taskmesh_client, 50)
    taskmesh_client.enqueue_many([noop.call(i) for i in range(10_000)])
    cfg = taskmesh_client.settings.replace(completed_keep=50)

    leased = step(taskmesh_client, cfg, 10_000, [])
    assert len(leased) == 10_000
    assert all(job.payload for job in leased)

    step(taskmesh_client, cfg, 0, [Update("c", job.id, job.token, "null") for job in leased])
    assert stored(taskmesh_client) == (50, 50, 50)
    # The 10,000 finished in one step, all newer than the 50 before them: 50 of them stay.
    ids, records, payloads = kept(taskmesh_client)
    assert ids <= {job.id for job in leased}, f"{len(ids & older)} of the jobs completed an hour before were kept"
    assert records == payloads == ids


def redis_ms(client: Client) -> int:
    seconds, micros = client.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def log_a_start_every_millisecond(client: Client, per_ms: int, span: int) -> int:
    """Log queue starts at every millisecond of ``span`` from one window before Redis's time now, so that
    whenever the next step runs (within ``span`` ms), one start was logged exactly ``per_ms`` before it.
    Returns the time read (ms)."""
    t0 = redis_ms(client)
    rate_log = client.keys("default").jobs.removesuffix("jobs") + "rate"
    client.redis.zadd(rate_log, {f"earlier-{i}": t0 - per_ms + i for i in range(span)})
    return t0


def test_a_start_logged_exactly_one_window_before_a_lease_still_counts(taskmesh_client: Client) -> None:
    per_ms, span = 60_000, 2_000
    taskmesh_client.set_limit("default", Limit(rate=span + 1, per=per_ms / 1000))
    taskmesh_client.enqueue_many([noop.call(i) for i in range(span + 2)])
    t0 = log_a_start_every_millisecond(taskmesh_client, per_ms, span)

    leased = step(taskmesh_client, taskmesh_client.settings, span + 2, [])
    now = json.loads(taskmesh_client.redis.hget(taskmesh_client.keys("default").jobs, leased[0].id))["started"]
    assert t0 <= now < t0 + span, "the step ran within the logged span"
    # In the window: the starts logged from now - per_ms on, the one logged exactly per_ms before included.
    in_window = t0 + span - now
    assert len(leased) == span + 1 - in_window, f"the start logged at {now - per_ms} (now - {per_ms} ms) must count"


def test_a_start_logged_exactly_one_window_before_holds_its_slot_one_more_millisecond(taskmesh_client: Client) -> None:
    per_ms, span = 60_000, 2_000
    taskmesh_client.set_limit("default", Limit(rate=1, per=per_ms / 1000))
    taskmesh_client.enqueue(noop, 1)
    t0 = log_a_start_every_millisecond(taskmesh_client, per_ms, span)

    reply = scripts.call(
        taskmesh_client.redis,
        "step",
        taskmesh_client.keys("default").all,
        scripts.step_args(taskmesh_client.settings, "w1", 1, []),
    )
    _, leased, look_again = scripts.parse_step(reply)
    assert leased == [] and redis_ms(taskmesh_client) < t0 + span, "the window was full for the whole step"
    # The oldest start in the window was logged exactly per_ms before the step: it leaves 1 ms later.
    assert look_again == 0.001, "the start logged exactly one window before the step is the oldest still counted"
    assert taskmesh_client.counts()["waiting"] == 1


GARBAGE = {
    "limit:": "[1, 2]",  # the queue's own limit
    "limit:limits.bad": "not json",
    "limit:limits.empty": "{}",
    "limit:limits.binary": b"\xff\xfe{",
    "limit:limits.deep": "[" * 100_000 + "]" * 100_000,
}


def test_a_stored_limit_that_cannot_be_read_is_reported_and_the_others_stay_readable(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=2), task="limits.noop")
    taskmesh_client.redis.hset(taskmesh_client.keys("default").meta, mapping=GARBAGE)  # type: ignore[arg-type]
    taskmesh_client.pause("default")

    # Setting another task's limit writes it and reads the settings back (this raised after writing).
    taskmesh_client.set_limit("default", Limit.parse("5/s"), task="limits.other")
    settings = taskmesh_client.queue_settings("default")

    assert settings.paused and settings.limit is None
    assert settings.task_limits == {"limits.noop": Limit(max_active=2), "limits.other": Limit.parse("5/s")}
    assert set(settings.invalid) == {"", "limits.bad", "limits.empty", "limits.binary", "limits.deep"}
    assert "'not json' is not a limit" in settings.invalid["limits.bad"]
    assert asyncio.run(taskmesh_client.aqueue_settings("default")).invalid == settings.invalid


def test_an_unreadable_stored_limit_is_removed_by_clearing_it(taskmesh_client: Client) -> None:
    taskmesh_client.redis.hset(taskmesh_client.keys("default").meta, mapping=GARBAGE)  # type: ignore[arg-type]
    taskmesh_client.redis.hset(taskmesh_client.keys("default").meta, "limit:not a task name", '{"max":1}')
    assert taskmesh_client.queue_settings("default").task_limits == {"not a task name": Limit(max_active=1)}

    taskmesh_client.set_limit("default", None)
    for name in ("limits.bad", "limits.empty", "limits.binary", "limits.deep", "not a task name"):
        taskmesh_client.set_limit("default", None, task=name)

    settings = taskmesh_client.queue_settings("default")
    assert (settings.limit, settings.task_limits, settings.invalid) == (None, {}, {})
    assert taskmesh_client.redis.hgetall(taskmesh_client.keys("default").meta) == {}
    with pytest.raises(ValueError, match="invalid task name"):  # a limit is set only under a valid name
        taskmesh_client.set_limit("default", Limit(max_active=1), task="not a task name")


#: Limits stored by hand under task names with a terminal control and with a byte that is not UTF-8.
ODD_NAMES = {b"limit:t\x1b[31m": b"not json", b"limit:t\xff": b"not json", b"limit:u\xfe": b'{"max":1}'}


def test_a_limit_under_a_name_with_controls_or_bytes_that_are_not_utf8_is_reported_and_removed(
    taskmesh_client: Client,
) -> None:
    raw = connect.sync_client(taskmesh_client.settings.redis_url, decode_responses=False)
    meta = taskmesh_client.keys("default").meta
    try:
        raw.hset(meta, mapping=ODD_NAMES)  # type: ignore[arg-type]
        settings = taskmesh_client.queue_settings("default")
        assert set(settings.invalid) == {"t\x1b[31m", "t\udcff"}  # surrogateescape: the bytes kept
        assert settings.task_limits == {"u\udcfe": Limit(max_active=1)}
        assert asyncio.run(taskmesh_client.aqueue_settings("default")) == settings

        taskmesh_client.set_limit("default", None, task="t\x1b[31m")
        taskmesh_client.set_limit("default", None, task="t\udcff")
        asyncio.run(taskmesh_client.aset_limit("default", None, task="u\udcfe"))
        assert raw.hgetall(meta) == {}
    finally:
        raw.close()


def test_set_limit_refuses_what_is_not_a_limit(taskmesh_client: Client) -> None:
    with pytest.raises(TypeError, match=r"Limit.parse\('100/m'\)"):
        taskmesh_client.set_limit("default", "100/m")  # type: ignore[arg-type]
    assert list(taskmesh_client.redis.scan_iter(match=f"{{{taskmesh_client.settings.prefix}*")) == []
