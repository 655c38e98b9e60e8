"""Schedulers under faults: three scheduler processes killed at random, and schedulers whose clocks are
30 s wrong. Every tick of an every-second schedule is enqueued exactly once, never early, with no gap."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import cast

import pytest

from taskmesh import Client
from taskmesh.testing import wait_until

from .conftest import Report
from .processes import WorkerPool

Workers = Callable[..., WorkerPool]
NAME = "faults.every_second"


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
    report(
        ticks=len(window),
        kills=kills,
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
    assert max(ticks) <= server_ms(fault_client), "no tick from the future"
    report(ticks=len(window), skews=list(skews), enqueue_jitter=jitter(ticks, window, "created"))
