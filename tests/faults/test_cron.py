"""Schedulers under faults: three scheduler processes killed at random, and schedulers whose clocks are
30 s wrong. Every tick of an every-second schedule is enqueued exactly once, never early, with no gap; and
every tick is decided once: a job id dedupes a tick fired twice, so the events of an every-second schedule
with overlap="skip" show it (a tick offered again while its own job is unfinished is recorded as skipped
besides enqueued), and each schedule's state holds the latest tick decided."""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import pytest

from taskmesh import Client
from taskmesh.testing import wait_until

from .conftest import Report
from .processes import WorkerPool

Workers = Callable[..., WorkerPool]
NAME = "faults.every_second"
UNLESS_BUSY = "faults.every_second_unless_busy"


def server_ms(client: Client) -> int:
    seconds, micros = cast(tuple[int, int], client.redis.time())
    return seconds * 1000 + micros // 1000


def fired(client: Client) -> dict[int, dict[str, int]]:
    """Per tick (ms): how often it was enqueued (events), and its job's created and started times."""
    keys = client.keys("default")
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(keys.events))
    out: dict[int, dict[str, int]] = {}
    for _, fields in entries:
        if fields["event"] == "enqueued" and fields.get("schedule") == NAME:
            out.setdefault(int(fields["tick"]), {"enqueued": 0})["enqueued"] += 1
    for tick, row in out.items():
        status = client.status(f"{NAME}@{tick}")
        assert status is not None and status.created_at is not None
        row["created"] = round(status.created_at.timestamp() * 1000)
        if status.started_at is not None:
            row["started"] = round(status.started_at.timestamp() * 1000)
    return out


def check_ticks(ticks: dict[int, dict[str, int]], since: int, until: int) -> list[int]:
    """Every second in [since, until] fired exactly once and no tick before its time; returns the ticks."""
    window = sorted(t for t in ticks if since <= t <= until)
    assert window, "no tick fired"
    assert window == list(range(window[0], window[-1] + 1, 1000)), f"gaps: {window}"
    assert window[0] - since <= 1000 and until - window[-1] <= 1000, (since, window[0], window[-1], until)
    assert all(ticks[t]["enqueued"] == 1 for t in ticks), "a tick enqueued twice"
    assert all(row["created"] >= tick for tick, row in ticks.items()), "a tick fired before its time"
    return window


def check_decisions(client: Client, since: int, until: int) -> int:
    """No tick of either schedule decided twice (enqueued or skipped more than once), each schedule's state
    holding the latest tick decided, and every second in [since, until] decided for the overlap="skip"
    schedule, with no gap; returns how many of its ticks were skipped as busy."""
    keys = client.keys("default")
    with client.redis.pipeline(transaction=True) as pipe:  # the events and the states at one instant
        pipe.xrange(keys.events)
        pipe.hgetall(keys.cron)
        raw_events, raw_states = pipe.execute()
    events = [fields for _, fields in cast(list[tuple[str, dict[str, str]]], raw_events)]
    states = {name: json.loads(raw) for name, raw in cast(dict[str, str], raw_states).items()}
    decided: dict[str, Counter[int]] = {}
    for name in (NAME, UNLESS_BUSY):
        mine = [f for f in events if f.get("schedule") == name and f["event"] in ("enqueued", "tick_skipped")]
        decided[name] = Counter(int(f["tick"]) for f in mine)
        twice = sorted(tick for tick, n in decided[name].items() if n > 1)
        assert not twice, f"{name}: ticks decided twice (enqueued or skipped more than once): {twice[:10]}"
        latest, last = max(decided[name], default=None), states[name]["last"]
        assert last == latest, f"{name}: its state's last tick {last} is not the latest decided, {latest}"
    window = sorted(tick for tick in decided[UNLESS_BUSY] if since <= tick <= until)
    assert window, f"{UNLESS_BUSY}: no tick decided"
    assert window == list(range(window[0], window[-1] + 1, 1000)), f"{UNLESS_BUSY}: gaps: {window}"
    assert window[0] - since <= 1000 and until - window[-1] <= 1000, (since, window[0], window[-1], until)
    events_skipped = [f for f in events if f["event"] == "tick_skipped" and f.get("schedule") == UNLESS_BUSY]
    return len(events_skipped)


def jitter(ticks: dict[int, dict[str, int]], window: list[int], field: str) -> dict[str, float]:
    late = sorted(ticks[t][field] - t for t in window if field in ticks[t])
    return {
        "p50_ms": statistics.median(late),
        "p99_ms": late[min(len(late) - 1, int(len(late) * 0.99))],
        "max_ms": late[-1],
    }


def test_three_schedulers_killed_at_random_fire_each_tick_once(
    fault_client: Client, workers: Workers, report: Report
) -> None:
    pool = workers(module="faults.cron_tasks", concurrency=4)
    for _ in range(3):
        pool.start()
    since = server_ms(fault_client) + 1000
    deadline = time.monotonic() + 20
    kills = 0
    rng = random.Random(7)
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 2.0))  # the pace of the kills, not a synchronisation
        victim = rng.choice(pool.alive())
        pool.kill(victim)
        kills += 1
        pool.start()  # back to three before the next kill: at least two are alive at every moment
    until = server_ms(fault_client) - 1000
    wait_until(
        lambda: all("started" in r for t, r in fired(fault_client).items() if t <= until),
        timeout=10,
        message="every fired tick ran",
    )
    ticks = fired(fault_client)
    window = check_ticks(ticks, since, until)
    skipped = check_decisions(fault_client, since, until)
    report(
        ticks=len(window),
        kills=kills,
        skipped_as_busy=skipped,
        enqueue_jitter=jitter(ticks, window, "created"),
        start_jitter=jitter(ticks, window, "started"),
    )


@pytest.mark.parametrize("skews", [(30.0, -30.0)])
def test_schedulers_with_clocks_thirty_seconds_wrong_neither_fire_early_nor_twice(
    fault_client: Client, workers: Workers, report: Report, monkeypatch: pytest.MonkeyPatch, skews: tuple[float, ...]
) -> None:
    for skew in skews:
        monkeypatch.setenv("TASKMESH_TEST_CLOCK_SKEW", str(skew))
        workers(module="faults.cron_tasks", launcher=("-m", "faults.skewed")).start()
    since = server_ms(fault_client) + 1000
    wait_until(lambda: len(fired(fault_client)) >= 6, timeout=15, message="six ticks fired")
    until = server_ms(fault_client) - 1000
    ticks = fired(fault_client)
    window = check_ticks(ticks, since, until)
    skipped = check_decisions(fault_client, since, until)
    assert max(ticks) <= server_ms(fault_client), "no tick from the future"
    report(
        ticks=len(window), skews=list(skews), skipped_as_busy=skipped, enqueue_jitter=jitter(ticks, window, "created")
    )
