"""The README demo: an embedded Redis, a worker process, a producer that follows its jobs.

Run it with ``./dev demo`` (or ``python -m examples.demo`` in an installed environment).
The server keeps its data (AOF) under ``.taskmesh-data/demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskmesh import Client, JobFailed
from taskmesh.embedded import EmbeddedRedis

from .demo_tasks import add, build_report, flaky_call

DATA_DIR = Path(".taskmesh-data/demo")
PREFIX = "demo"


def main() -> int:
    with EmbeddedRedis(DATA_DIR) as server:
        print(f"embedded Redis on {server.url} (data in {DATA_DIR}/)")
        env = {**os.environ, "TASKMESH_REDIS_URL": server.url, "TASKMESH_PREFIX": PREFIX}
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskmesh", "run", "examples.demo_tasks", "--concurrency", "8"], env=env
        )
        try:
            return produce(Client(server.url, prefix=PREFIX))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)


def produce(client: Client) -> int:
    follower = client.events(["demo"], since="$", timeout=30)  # "$" is resolved now: no event is missed
    handles = [
        build_report.options(client=client).enqueue(customer, rows=1000 * (i + 1))
        for i, customer in enumerate(["acme", "globex", "initech"])
    ]
    handles += [add.options(client=client).enqueue(i, i * i) for i in range(5)]
    handles += [flaky_call.options(client=client).enqueue(seed) for seed in range(2)]
    print(f"enqueued {len(handles)} jobs; an API would answer 202 with these ids at once:")
    for handle in handles:
        print(f"  {handle.id}  {client.status(handle.id, handle.queue).task}")  # type: ignore[union-attr]

    pending = {handle.id for handle in handles}
    began = time.monotonic()
    for event in follower:
        if event.job_id not in pending:
            continue
        detail = " ".join(f"{k}={v}" for k, v in event.data.items())
        print(f"  {time.monotonic() - began:6.2f}s  {event.name:<9} {event.job_id[:8]}  {detail}")
        if event.name in ("completed", "failed"):
            pending.discard(event.job_id)
        if not pending:
            break

    print("results:")
    failures = 0
    for handle in handles:
        try:
            print(f"  {handle.id[:8]}  {handle.result(timeout=10)}")
        except JobFailed as exc:
            failures += 1
            print(f"  {handle.id[:8]}  FAILED {exc}")
    print(f"queue counts: {client.counts('demo')}")
    return 1 if failures or pending else 0


if __name__ == "__main__":
    sys.exit(main())
