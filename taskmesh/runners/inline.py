"""The ``inline`` runner: async tasks on the worker's event loop, sync tasks in a thread pool."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..plugins import hookimpl

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task
    from .base import RunnerRegistry


class InlineRunner:
    """Runs tasks in the worker process. Sync bodies never block the loop, so leases keep renewing."""

    def __init__(self, settings: Settings) -> None:
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="taskmesh-task")

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if task.is_async:
            return await task.fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(task.fn, *args, **kwargs))

    async def close(self) -> None:
        # Threads still running a job that was handed back finish on their own; nobody waits for them.
        self._pool.shutdown(wait=False, cancel_futures=True)


@hookimpl
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    register.add("inline", InlineRunner)
