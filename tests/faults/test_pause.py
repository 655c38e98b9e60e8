"""A worker frozen (SIGSTOP) past its lease loses the job to another; resumed, its progress and result are refused."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from taskmesh import Client, JobState
from taskmesh.testing import wait_until

from .conftest import Report
from .ledger import Ledger, check
from .processes import WorkerPool

Workers = Callable[..., WorkerPool]


def test_resumed_holder_cannot_overwrite_the_new_holders_progress_or_result(
    fault_client: Client, ledger: Ledger, workers: Workers, tmp_path: Path, report: Report
) -> None:
    gate = tmp_path / "gate"
    pool = workers(concurrency=1)
    paused = pool.start()
    handle = fault_client.enqueue("faults.reporting", str(gate))
    started = {"pid": paused.pid, "phase": "started"}
    wait_until(lambda: handle.status().progress == started, timeout=10, message="the first holder reported progress")

    paused.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    second = pool.start()
    wait_until(lambda: ledger.count("start", second.pid) == 1, timeout=10, message="the second holder started")
    takeover = time.monotonic() - stopped_at
    gate.touch()
    done = fault_client.wait(handle.id, timeout=10)
    assert done is not None and done.state is JobState.COMPLETED
    record = fault_client.redis.hget(fault_client.keys("default").jobs, handle.id)

    paused.send_signal(signal.SIGCONT)
    wait_until(lambda: ledger.count("finish", paused.pid) == 1, timeout=10, message="the resumed run finished")
    wait_until(lambda: "result refused" in pool.log_of(paused), timeout=10, message="the resumed run's result refused")

    verdict = check(fault_client, ledger, [handle.id])
    refused_locally = ledger.count("progress_refused", paused.pid) == 1
    report(
        takeover_seconds=round(takeover, 3),
        late_progress_refused_by="the worker (lease lost)" if refused_locally else "Redis (stale token)",
        **verdict.summary(),
    )
    verdict.assert_sound()
    # The record is exactly what the second holder left: the resumed run changed nothing.
    assert fault_client.redis.hget(fault_client.keys("default").jobs, handle.id) == record
    status = handle.status()
    second_token = ledger.events("start")[-1]["token"]
    assert status.result == {"pid": second.pid, "token": second_token}
    assert status.progress == {"pid": second.pid, "phase": "late"}
    assert (status.attempts, status.stalls) == (1, 1)
    assert verdict.duplicate_executions == {handle.id: 2}  # both runs finished; one result recorded

    entries = cast(list[tuple[str, dict[str, str]]], fault_client.redis.xrange(fault_client.keys("default").events))
    events = [fields for _, fields in entries if fields["job"] == handle.id]
    names = [fields["event"] for fields in events]
    assert names.count("completed") == 1 and names.count("stalled") == 1
    after_stall = events[names.index("stalled") :]
    progress_pids = [json.loads(fields["progress"])["pid"] for fields in after_stall if fields["event"] == "progress"]
    assert progress_pids == [second.pid, second.pid]
