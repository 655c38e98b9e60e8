"""No job is lost: a worker killed mid-job is recovered by another, and a busy worker keeps its leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from taskmesh import Client, JobState, task
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
RECOVERY = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}

WORKER_SCRIPT = """
import asyncio
import sys

sys.path.insert(0, sys.argv[3])
from test_recovery import wait_for_file  # the same task as the test's own worker

from taskmesh import Registry, Settings, Worker

settings = Settings(
    redis_url=sys.argv[1], prefix=sys.argv[2], lease_seconds=1.0, renew_interval=0.3, sweep_interval=0.2
)
asyncio.run(Worker.create(Registry([wait_for_file]), settings, entry_points=False).run())
"""


@task(name="recovery.wait_for_file")
def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"


@task(name="recovery.busy")
def busy(seconds: float) -> str:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return "busy done"


def job_events(client: Client, job_id: str) -> list[str]:
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys("default").events))
    return [fields["event"] for _, fields in entries if fields["job"] == job_id]


@pytest.fixture
def worker_process(tmp_path: Path, taskmesh_client: Client) -> Iterator[subprocess.Popen[bytes]]:
    script = tmp_path / "worker_main.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    settings = taskmesh_client.settings
    proc = subprocess.Popen(
        [sys.executable, str(script), settings.redis_url, settings.prefix, str(Path(__file__).parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_job_of_a_killed_worker_completes_on_another_worker(
    taskmesh_client: Client,
    taskmesh_worker: StartWorker,
    worker_process: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    handle = taskmesh_client.enqueue("recovery.wait_for_file", str(release))
    wait_until(lambda: handle.status().state is JobState.ACTIVE, timeout=10, message="job active in the worker process")
    lost_worker = handle.status().worker
    assert lost_worker is not None and f":{worker_process.pid}:" in lost_worker

    os.kill(worker_process.pid, signal.SIGKILL)
    worker_process.wait(timeout=5)
    release.touch()
    killed_at = time.monotonic()
    taskmesh_worker([wait_for_file], **RECOVERY)

    assert handle.result(timeout=4) == "done"
    assert time.monotonic() - killed_at < 1.0 + 0.2 + 2.0  # lease + sweep + slack
    status = handle.status()
    assert (status.stalls, status.attempts) == (1, 1)
    assert status.worker != lost_worker
    assert job_events(taskmesh_client, handle.id).count("completed") == 1


def test_sync_task_busy_longer_than_the_lease_is_not_stalled(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    handle = busy.enqueue(1.5)
    running = taskmesh_worker([busy], **RECOVERY)
    assert handle.result(timeout=4) == "busy done"
    status = handle.status()
    assert (status.stalls, status.attempts) == (0, 1)
    assert job_events(taskmesh_client, handle.id) == ["enqueued", "active", "completed"]
    assert running.worker.stats.recovered == 0
