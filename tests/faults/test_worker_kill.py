"""kill -9 of worker processes: the jobs they held run again elsewhere; none is lost or recorded twice."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from taskmesh import Call, Client
from taskmesh.testing import wait_until

from .conftest import FAST, Report
from .ledger import Ledger, settle
from .processes import WorkerPool

Workers = Callable[..., WorkerPool]
#: Allowance on top of lease + sweep for a loaded two-core machine (process scheduling, the 50 reruns).
MARGIN = 1.5


def test_fifty_active_jobs_of_a_killed_worker_complete_on_another(
    fault_client: Client, ledger: Ledger, workers: Workers, tmp_path: Path, report: Report
) -> None:
    gate = tmp_path / "gate"
    pool = workers(concurrency=60)
    doomed = pool.start()
    handles = fault_client.enqueue_many([Call("faults.gated", [str(gate)]) for _ in range(50)])
    wait_until(lambda: fault_client.counts()["active"] == 50, timeout=10, message="50 jobs active")
    wait_until(lambda: ledger.count("start", doomed.pid) == 50, timeout=10, message="50 tasks started")
    pool.start()  # idle until the jobs come back
    assert fault_client.counts()["active"] == 50

    pool.kill(doomed)
    killed_at = time.time()  # wall clock, as Redis stamps the finish times
    gate.touch()
    verdict = settle(fault_client, ledger, [h.id for h in handles], timeout=15)
    finished = [h.status().finished_at for h in handles]
    recovery = max(f.timestamp() for f in finished if f is not None) - killed_at
    bound = FAST["lease_seconds"] + FAST["sweep_interval"] * 1.2 + MARGIN
    report(recovery_seconds=round(recovery, 3), bound_seconds=bound, **verdict.summary())
    verdict.assert_sound()
    assert recovery < bound
    assert len(verdict.reruns) == 50  # every job started in the killed worker and again in the other
    assert ledger.count("finish", doomed.pid) == 0
    for handle in handles:
        status = handle.status()
        assert (status.attempts, status.stalls) == (1, 1)
        assert status.worker is not None and f":{doomed.pid}:" not in status.worker


def test_random_kills_during_five_thousand_jobs_lose_nothing(
    fault_client: Client, ledger: Ledger, workers: Workers, report: Report
) -> None:
    jobs, bound = 5000, 60.0
    # A job may be orphaned by several kills in a row: it must come back each time, never fail as lost.
    pool = workers(concurrency=10, max_stalls=1000)
    started = time.monotonic()
    handles = fault_client.enqueue_many([Call("faults.short", [5 + n % 31]) for n in range(jobs)])  # 5-35 ms
    pool.keep(3)
    chaos = random.Random(7)
    kills = 0
    while fault_client.counts()["completed"] < jobs and time.monotonic() - started < bound:
        time.sleep(chaos.uniform(0.1, 0.3))  # the pace of the chaos, not a synchronisation
        alive = pool.alive()
        if alive:
            pool.kill(chaos.choice(alive))
            kills += 1
    remaining = max(bound - (time.monotonic() - started), 1.0)
    verdict = settle(fault_client, ledger, [h.id for h in handles], timeout=remaining)
    elapsed = time.monotonic() - started
    report(kills=kills, restarts=pool.restarts, seconds=round(elapsed, 2), **verdict.summary())
    verdict.assert_sound()
    assert elapsed < bound
    assert kills >= 5
