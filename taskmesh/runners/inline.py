"""The ``inline`` runner: async tasks on the worker's event loop, sync tasks on the runner's own threads."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..plugins import hookimpl

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task
    from .base import RunnerRegistry

_Call = tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class InlineRunner:
    """Runs tasks in the worker process. Sync bodies never block the loop, so leases keep renewing.

    Sync calls go to up to ``concurrency`` daemon threads (started as calls need them) through one
    queue. Finished calls are collected in ``_done``; the thread that makes it non-empty wakes the loop
    once for the whole batch, and ``_deliver`` resolves the futures there. A call whose await was
    cancelled (timeout, hand-back) keeps its thread until it returns; its outcome is dropped.
    Daemon threads never keep the process alive at exit.
    """

    def __init__(self, settings: Settings) -> None:
        self._size = settings.concurrency
        self._threads: list[threading.Thread] = []
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._done: deque[_Outcome] = deque()
        self._lock = threading.Lock()  # guards _done
        self._pending = 0  # sync calls submitted and not yet delivered; touched on the loop only
        self._closed = False

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if task.is_async:
            return await task.fn(*args, **kwargs)
        if self._closed:
            raise RuntimeError("the inline runner is closed")
        future = asyncio.get_running_loop().create_future()
        self._pending += 1
        if self._pending > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(target=self._serve, name=f"taskmesh-task-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._calls.put((task.fn, args, kwargs, future))
        return await future

    async def close(self) -> None:
        # Idle threads exit at their sentinel; a busy one (its job handed back) exits when its call returns.
        self._closed = True
        for _ in self._threads:
            self._calls.put(None)
        self._threads.clear()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args, kwargs, future = call
            result: Any = None
            error: BaseException | None = None
            if not future.cancelled():  # nobody awaits a call cancelled before it started
                try:
                    result = fn(*args, **kwargs)
                except StopIteration as exc:  # a future refuses StopIteration (it would never resolve)
                    error = RuntimeError(f"the task raised StopIteration: {exc!r}")
                    error.__cause__ = exc
                except BaseException as exc:
                    error = exc
            with self._lock:
                self._done.append((future, result, error))
                first = len(self._done) == 1
            if first:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                    future.get_loop().call_soon_threadsafe(self._deliver)
            del call, fn, args, kwargs, future, result, error  # hold nothing while idle

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, deque()
        for future, result, error in done:
            self._pending -= 1
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


@hookimpl
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    register.add("inline", InlineRunner)
