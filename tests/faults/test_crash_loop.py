"""A job that kills its worker every time fails as "worker lost" after the stall limit; other jobs keep flowing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

from taskmesh import Call, Client, JobState
from taskmesh.testing import wait_until

from .conftest import Report
from .ledger import Ledger, settle
from .processes import WorkerPool

Workers = Callable[..., WorkerPool]
MAX_STALLS = 2
#: Jobs that share a worker with the poison job die with it (and would fail as "worker lost" too
#: if that happened to one of them more than MAX_STALLS times; see README, "Delivery guarantee").
CONCURRENCY = 4


def test_job_killing_its_worker_fails_as_worker_lost_while_others_flow(
    fault_client: Client, ledger: Ledger, workers: Workers, report: Report
) -> None:
    pool = workers(concurrency=CONCURRENCY, max_stalls=MAX_STALLS)
    pool.keep(3)
    wait_until(lambda: len(fault_client.workers()) == 3, timeout=15, message="three workers registered")
    produced: list[str] = []
    stop = threading.Event()

    def produce() -> None:  # a steady stream of short jobs for as long as the poison job lives
        while not stop.wait(0.1):
            produced.extend(h.id for h in fault_client.enqueue_many([Call("faults.short", [10])] * 5))

    started = time.monotonic()
    poison = fault_client.enqueue("faults.crash")
    producer = threading.Thread(target=produce, name="faults-producer", daemon=True)
    producer.start()
    try:
        failed = fault_client.wait_job(poison.id, timeout=20)
        poison_seconds = time.monotonic() - started
        flowed = fault_client.counts()["completed"]
    finally:
        stop.set()
        producer.join(timeout=10)
    expected = [poison.id, *produced]
    verdict = settle(fault_client, ledger, expected, timeout=15, final={poison.id: JobState.FAILED})
    report(
        poison_seconds=round(poison_seconds, 2),
        restarts=pool.restarts,
        short_jobs=len(produced),
        completed_while_poison_lived=flowed,
        **verdict.summary(),
    )
    verdict.assert_sound()
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error is not None and failed.error["type"] == "WorkerLost"
    assert "worker lost" in failed.error["message"]
    assert failed.stalls == MAX_STALLS + 1
    assert sum(1 for line in ledger.events("start") if line["job"] == poison.id) == MAX_STALLS + 1
    assert pool.restarts >= MAX_STALLS + 1
    assert flowed > 0
    entries = cast(list[tuple[str, dict[str, str]]], fault_client.redis.xrange(fault_client.keys("default").events))
    outcome = [fields for _, fields in entries if fields["job"] == poison.id and fields["event"] == "failed"]
    assert [fields.get("reason") for fields in outcome] == ["worker lost"]
