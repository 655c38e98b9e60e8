"""Redis at maxmemory (policy noeviction): enqueue is refused with RedisFull, nothing new is leased, what
running jobs report is still recorded, and once memory is back every job runs exactly once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Server

from taskmesh import Client, RedisFull, Settings
from taskmesh.store import scripts
from taskmesh.testing import running_worker, wait_until

from .conftest import EVENTS_MAXLEN, FAST, Report
from .ledger import Ledger, settle
from .tasks import gated, short

JOBS = 60
SLOTS = 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path / "redis", "--maxmemory-policy", "noeviction") as redis_server:
        yield redis_server


def test_out_of_memory_runs_no_job_twice_and_loses_none(
    server: Server, ledger: Ledger, tmp_path: Path, report: Report, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskmesh")
    client = Client(settings=Settings(redis_url=server.url, prefix="faults", events_maxlen=EVENTS_MAXLEN))
    admin = server.client()
    gate = tmp_path / "gate"
    try:
        ids = [client.enqueue(gated, str(gate)).id for _ in range(JOBS)]
        with running_worker(client, [gated], concurrency=SLOTS, **FAST) as running:
            wait_until(lambda: ledger.count("start") == SLOTS, timeout=10, message="the first jobs started")
            admin.config_set("maxmemory", 1)  # far below what is used: every write that may grow memory is refused
            with pytest.raises(RedisFull, match="out of memory"):
                client.enqueue(gated, str(gate))
            gate.touch()
            # What the running jobs report is recorded at maxmemory: none of them will run again.
            wait_until(lambda: client.counts()["completed"] == SLOTS, timeout=10, message="results recorded")
            queue = running.worker._inflight.queues[0]
            wait_until(lambda: queue.leasing.failures >= 3, timeout=10, message="three refused leases")
            refused = queue.leasing.failures
            started_while_full = ledger.count("start") - SLOTS
            waiting_while_full = client.counts()["waiting"]
            admin.config_set("maxmemory", 0)
            verdict = settle(client, ledger, ids, timeout=30)
    finally:
        client.close()
        admin.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "taskmesh.worker"]
    full_lines = [m for m in messages if "out of memory" in m and "working again" not in m]
    report(
        refused_leases=refused,
        started_while_full=started_while_full,
        oom_log_lines=len(full_lines),
        **verdict.summary(),
    )
    verdict.assert_sound()
    assert (started_while_full, waiting_while_full) == (0, JOBS - SLOTS)
    assert verdict.duplicate_executions == {} and verdict.reruns == {}
    assert len(full_lines) == 1, full_lines  # once per streak, not once per try
    assert any("nothing can be leased" in m and "working again" in m for m in messages)


def test_a_worker_started_at_maxmemory_recovers_a_dead_workers_jobs(
    server: Server, ledger: Ledger, report: Report
) -> None:
    """While Redis is full a new worker still starts (it registers once Redis has room) and puts the jobs of a
    dead worker back to waiting; they run once memory is back."""
    client = Client(settings=Settings(redis_url=server.url, prefix="faults", events_maxlen=EVENTS_MAXLEN))
    admin = server.client()
    try:
        ids = [client.enqueue(short, 1).id for _ in range(4)]
        keys = client.keys("default")
        dead = client.settings.replace(lease_seconds=0.3, renew_interval=0.1)
        leased = scripts.call(client.redis, "step", keys.all, scripts.step_args(dead, "dead-worker", 4, []))
        assert len(leased[1]) == 4  # leased by a worker that then died
        admin.config_set("maxmemory", 1)
        with running_worker(client, [short], **FAST):
            wait_until(lambda: client.counts()["waiting"] == 4, timeout=10, message="swept back to waiting")
            assert ledger.count("start") == 0  # nothing leased while Redis is full
            admin.config_set("maxmemory", 0)
            verdict = settle(client, ledger, ids, timeout=30)
    finally:
        client.close()
        admin.close()
    report(**verdict.summary())
    verdict.assert_sound()
    assert verdict.reruns == {} and verdict.stalls == 4
