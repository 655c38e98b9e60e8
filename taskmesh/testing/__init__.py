"""Helpers for testing tasks in-process against a real Redis (see also the pytest plugin)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..client import Client
from ..dispatch import Worker, WorkerStats
from ..errors import JobFailed
from ..job import JobState
from ..registry import Registry
from ..settings import Settings
from ..task import Task


def _registry(tasks: Registry | Iterable[Task[Any, Any]]) -> Registry:
    return tasks if isinstance(tasks, Registry) else Registry(tasks)


def drain(
    client: Client,
    tasks: Registry | Iterable[Task[Any, Any]],
    *,
    queues: Iterable[str] | None = None,
    raise_errors: bool = True,
    timeout: float = 30.0,
    **settings: Any,
) -> WorkerStats:
    """Run every job that is due (in-process, burst mode) and return the worker's stats.

    With ``raise_errors`` a job that failed during the drain re-raises as :class:`JobFailed`.
    """
    registry = _registry(tasks)
    queue_names = tuple(queues or registry.queues or ("default",))
    cfg = client.settings.replace(queues=queue_names, **settings)
    failed_before = {q: _failed_ids(client, q) for q in queue_names}
    worker = Worker.create(registry, cfg, burst=True, entry_points=False)
    stats = asyncio.run(asyncio.wait_for(worker.run(), timeout))
    if raise_errors:
        for q in queue_names:
            new = _failed_ids(client, q) - failed_before[q]
            for job_id in sorted(new):
                status = client.status(job_id, q)
                if status is not None and status.state is JobState.FAILED:
                    raise JobFailed(job_id, "failed", status.error)
    return stats


def _failed_ids(client: Client, queue: str) -> set[str]:
    return set(client.store.job_ids(queue, "failed"))


class RunningWorker:
    """A worker running in a background thread; ``stop()`` asks it to stop gracefully and waits."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stats: WorkerStats | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="taskmesh-test-worker", daemon=True)
        self._ready = threading.Event()

    def _main(self) -> None:
        try:
            self.stats = asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _run(self) -> WorkerStats:
        runner = asyncio.create_task(self.worker.run())
        started = asyncio.create_task(self.worker.started.wait())
        await asyncio.wait([runner, started], return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and not runner.cancelled():
            self.error = runner.exception()  # a failed start is start()'s error, not only stop()'s
        self._ready.set()
        return await runner

    def start(self, timeout: float = 10.0) -> RunningWorker:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"worker did not start within {timeout}s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 30.0) -> WorkerStats:
        self.worker.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"worker did not stop within {timeout}s")
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


@contextmanager
def running_worker(
    client: Client, tasks: Registry | Iterable[Task[Any, Any]], *, queues: Iterable[str] | None = None, **settings: Any
) -> Iterator[RunningWorker]:
    """Run a worker in a background thread for the duration of the ``with`` block."""
    registry = _registry(tasks)
    cfg = client.settings.replace(queues=tuple(queues or registry.queues or ("default",)), **settings)
    running = RunningWorker(Worker.create(registry, cfg, entry_points=False)).start()
    try:
        yield running
    finally:
        running.stop()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, message: str = "condition"
) -> Any:
    """Wait until ``predicate()`` is truthy (bounded); return its value. For state with no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout}s")
        time.sleep(interval)


__all__ = ["RunningWorker", "Settings", "drain", "running_worker", "wait_until"]
