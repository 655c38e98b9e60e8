"""A task that hogs the CPU for longer than the lease is not taken for a stalled one."""

from __future__ import annotations

from contextlib import ExitStack
from typing import cast

from taskmesh import Client
from taskmesh.testing import running_worker

from .conftest import FAST, Report
from .ledger import Ledger, settle
from .tasks import busy_async, busy_sync

BUSY_SECONDS = 3.0  # three leases


def test_busy_tasks_keep_their_leases(fault_client: Client, ledger: Ledger, report: Report) -> None:
    # Two workers: while one is busy, the other's sweep would recover the job if its lease ran out.
    with ExitStack() as stack:
        running = [
            stack.enter_context(running_worker(fault_client, [busy_sync, busy_async], concurrency=2, **FAST))
            for _ in range(2)
        ]
        handles = [fault_client.enqueue(busy_sync, BUSY_SECONDS), fault_client.enqueue(busy_async, BUSY_SECONDS)]
        verdict = settle(fault_client, ledger, [h.id for h in handles], timeout=BUSY_SECONDS + 10)
    entries = cast(list[tuple[str, dict[str, str]]], fault_client.redis.xrange(fault_client.keys("default").events))
    stalled = [fields for _, fields in entries if fields["event"] == "stalled"]
    statuses = {h.id: h.status() for h in handles}
    report(
        busy_seconds=BUSY_SECONDS,
        lease_seconds=FAST["lease_seconds"],
        stalled_events=len(stalled),
        recovered=sum(r.stats.recovered for r in running if r.stats is not None),
        **verdict.summary(),
    )
    verdict.assert_sound()
    assert stalled == []
    for status in statuses.values():
        assert (status.attempts, status.stalls) == (1, 0), status.task
    assert verdict.reruns == {} and verdict.duplicate_executions == {}
