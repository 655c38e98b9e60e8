"""A worker frozen (SIGSTOP) past its lease loses the job to another. Resumed while the new holder still holds the
lease and runs the job, its late progress and result change nothing; the new holder's later reports land."""

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
Events = list[tuple[str, dict[str, str]]]


def test_resumed_holder_cannot_overwrite_the_running_new_holders_progress_or_result(
    fault_client: Client, ledger: Ledger, workers: Workers, tmp_path: Path, report: Report
) -> None:
    gate = tmp_path / "gate"
    keys = fault_client.keys("default")
    first_pool = workers(concurrency=1)
    # The new holder is frozen too while the first one reports: its lease, far longer than the test, stays its own.
    second_pool = workers(concurrency=1, lease_seconds=30.0)
    paused = first_pool.start()
    handle = fault_client.enqueue("faults.reporting", str(gate))
    started = {"pid": paused.pid, "phase": "started"}
    wait_until(lambda: handle.status().progress == started, timeout=10, message="the first holder reported progress")

    paused.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    second = second_pool.start()
    wait_until(lambda: ledger.count("start", second.pid) == 1, timeout=10, message="the second holder started")
    takeover = time.monotonic() - stopped_at
    restarted = {"pid": second.pid, "phase": "started"}
    wait_until(lambda: handle.status().progress == restarted, timeout=10, message="the second holder reported")
    second.send_signal(signal.SIGSTOP)  # mid-run, holding the lease
    status = handle.status()
    assert (status.state, status.attempts, status.stalls) == (JobState.ACTIVE, 1, 1)
    record = fault_client.redis.hget(keys.jobs, handle.id)
    events = cast(Events, fault_client.redis.xrange(keys.events))

    gate.touch()
    paused.send_signal(signal.SIGCONT)
    wait_until(lambda: ledger.count("finish", paused.pid) == 1, timeout=10, message="the resumed run finished")
    wait_until(
        lambda: "result refused" in first_pool.log_of(paused) or handle.status().state is not JobState.ACTIVE,
        timeout=10,
        message="the resumed run's result answered",
    )
    # The record and the stream are exactly what the second holder left: the resumed run changed nothing.
    assert fault_client.redis.hget(keys.jobs, handle.id) == record, "the resumed run changed the job"
    assert fault_client.redis.xrange(keys.events) == events, "the resumed run's reports reached the event stream"
    refused_locally = ledger.count("progress_refused", paused.pid) == 1

    second.send_signal(signal.SIGCONT)
    done = fault_client.wait_job(handle.id, timeout=10)
    assert done is not None and done.state is JobState.COMPLETED
    wait_until(lambda: ledger.count("finish", second.pid) == 1, timeout=10, message="the second run finished")

    verdict = check(fault_client, ledger, [handle.id])
    report(
        takeover_seconds=round(takeover, 3),
        late_progress_refused_by="the worker (lease lost)" if refused_locally else "Redis (stale token)",
        **verdict.summary(),
    )
    verdict.assert_sound()
    second_token = ledger.events("start")[-1]["token"]
    assert (done.result, done.progress) == (
        {"pid": second.pid, "token": second_token},
        {"pid": second.pid, "phase": "late"},
    )
    assert (done.attempts, done.stalls) == (1, 1)
    assert verdict.duplicate_executions == {handle.id: 2}  # both runs finished; one result recorded

    entries = cast(Events, fault_client.redis.xrange(keys.events))
    job_events = [fields for _, fields in entries if fields["job"] == handle.id]
    names = [fields["event"] for fields in job_events]
    assert names.count("completed") == 1 and names.count("stalled") == 1
    after_stall = job_events[names.index("stalled") :]
    progress_pids = [json.loads(fields["progress"])["pid"] for fields in after_stall if fields["event"] == "progress"]
    assert progress_pids == [second.pid, second.pid]
