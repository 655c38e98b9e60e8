"""Tasks of the fault tests. Worker processes import them with ``taskmesh run faults.tasks``
(``tests/`` on ``PYTHONPATH``); in-process workers use the same objects. Each writes its runs to the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from taskmesh import Job, LeaseLost, task

from .ledger import record_run, run_result

#: Longest a gated task waits for its gate (a bound, so no task outlives a failed test for long).
GATE_BOUND = 60.0


async def _wait_for(gate: str) -> None:
    deadline = time.monotonic() + GATE_BOUND
    while not Path(gate).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@task(name="faults.gated")
async def gated(job: Job, gate: str) -> dict[str, int]:
    """Holds its slot until the file ``gate`` exists."""
    record_run("start", job)
    await _wait_for(gate)
    record_run("finish", job)
    return run_result(job)


@task(name="faults.short")
async def short(job: Job, ms: float) -> dict[str, int]:
    record_run("start", job)
    await asyncio.sleep(ms / 1000)
    record_run("finish", job)
    return run_result(job)


@task(name="faults.reporting")
async def reporting(job: Job, gate: str) -> dict[str, int]:
    """Reports progress tagged with its pid before and after waiting for ``gate``."""
    record_run("start", job)
    job.progress({"pid": os.getpid(), "phase": "started"})
    await _wait_for(gate)
    try:
        job.progress({"pid": os.getpid(), "phase": "late"})
    except LeaseLost:  # the worker already knows another holder took the job
        record_run("progress_refused", job)
    record_run("finish", job)
    return run_result(job)


@task(name="faults.busy_sync")
def busy_sync(job: Job, seconds: float) -> dict[str, int]:
    """Keeps a CPU busy in a worker thread."""
    record_run("start", job)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    record_run("finish", job)
    return run_result(job)


@task(name="faults.busy_async")
async def busy_async(job: Job, seconds: float) -> dict[str, int]:
    """Keeps the worker's event loop busy: never awaits until done."""
    record_run("start", job)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    record_run("finish", job)
    return run_result(job)


@task(name="faults.crash")
def crash(job: Job) -> None:
    """Kills its own worker process, every time it runs."""
    record_run("start", job)
    os.kill(os.getpid(), signal.SIGKILL)
