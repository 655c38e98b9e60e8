"""The benchmark's worker process: one ``Worker`` on the no-op tasks below.

Run by ``bench.py`` as a child process. Prints one JSON line ``{"event": "ready", ...}``
once the worker is up and one ``{"event": "done", ...}`` line when ``run()`` returns
(burst mode: everything due ran; otherwise: after SIGTERM/SIGINT).

Times are measured in this process: ``t_start`` is taken just before ``worker.run()``
(imports and ``Worker.create`` done), ``t_dispatch_end`` when the dispatcher loop
returns (burst: the queue is empty and nothing runs), ``t_run_end`` when ``run()``
returns (after closing connections and upkeep tasks). ``dispatch_cpu_seconds`` is the
process's CPU time (all threads) over ``t_start .. t_dispatch_end``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from typing import Any

from bench_tasks import noop_subprocess

from taskmesh import Registry, Settings, Worker, task


@task(name="bench.noop_async")
async def noop_async() -> None:
    return None


@task(name="bench.noop_sync")
def noop_sync() -> None:
    return None


@task(name="bench.stamp_async")
async def stamp_async() -> float:
    """Returns the wall-clock time at which the task body started."""
    return time.time()


@task(name="bench.stamp_sync")
def stamp_sync() -> float:
    return time.time()


TASKS = (noop_async, noop_sync, stamp_async, stamp_sync, noop_subprocess)


class TimedWorker(Worker):
    """A worker that notes when its dispatcher loop ends (before shutdown work)."""

    t_dispatch_end: float = 0.0
    cpu_dispatch_end: float = 0.0

    async def _dispatch(self) -> None:
        await super()._dispatch()
        self.t_dispatch_end = time.perf_counter()
        self.cpu_dispatch_end = time.process_time()


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _main(worker: TimedWorker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    running = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.started.wait())
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if worker.started.is_set():
        _emit({"event": "ready", "pid": os.getpid(), "t_ready": time.perf_counter() - t_start})
    stats = await running
    t_run_end = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        {
            "event": "done",
            "dispatch_seconds": worker.t_dispatch_end - t_start,
            "run_seconds": t_run_end - t_start,
            "dispatch_cpu_seconds": worker.cpu_dispatch_end - cpu_start,
            "completed": stats.completed,
            "failed": stats.failed,
            "leased": stats.leased,
            "maxrss_kb": usage.ru_maxrss,
            "cpu_user": usage.ru_utime,
            "cpu_system": usage.ru_stime,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--settings", default="{}", help="extra Settings fields as a JSON object")
    args = parser.parse_args()
    settings = Settings(
        redis_url=args.redis_url,
        prefix=args.prefix,
        concurrency=args.concurrency,
        **json.loads(args.settings),
    )
    worker = TimedWorker.create(Registry(TASKS), settings, burst=args.burst, entry_points=False)
    assert isinstance(worker, TimedWorker)
    asyncio.run(_main(worker))


if __name__ == "__main__":
    main()
