"""The ``inline`` runner: async tasks on the worker's event loop, sync tasks on the runner's own threads."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from ..plugins import hookimpl
from .base import BaseRunner

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task
    from .base import RunnerRegistry

_Call = tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class InlineRunner(BaseRunner):
    """Runs tasks in the worker process. Sync bodies never block the loop, so leases keep renewing.

    Sync calls go to daemon threads (started as calls need them) through one queue. Finished calls are
    collected in ``_done``; the thread that makes it non-empty wakes the loop once for the whole batch,
    and ``_deliver`` resolves the futures there. A call whose await was cancelled (timeout, hand-back)
    while its body runs is abandoned: it keeps its thread until it returns and its outcome is dropped.
    The thread limit is ``concurrency`` plus the abandoned calls, so they never starve later jobs; the
    thread that finishes an abandoned call exits if the pool is then over the limit.
    Daemon threads never keep the process alive at exit.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._size = settings.concurrency
        self._threads = 0  # live threads; guarded by _lock
        self._started = 0  # threads ever started (names them); touched on the loop only
        self._running: set[asyncio.Future[Any]] = set()  # calls whose body is running; guarded by _lock
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._done: deque[_Outcome] = deque()
        self._lock = threading.Lock()  # guards _done, _running and _threads
        self._pending = 0  # sync calls submitted and not yet delivered; touched on the loop only
        self._closed = False

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        args = self.call_args(task, job, args)
        if task.is_async:
            return await task.fn(*args, **kwargs)
        if self._closed:
            raise RuntimeError("the inline runner is closed")
        future = asyncio.get_running_loop().create_future()
        self._pending += 1
        with self._lock:
            spawn = self._threads < self._pending and self._threads < self._limit()
            if spawn:
                self._threads += 1
        if spawn:
            threading.Thread(target=self._serve, name=f"taskmesh-task-{self._started}", daemon=True).start()
            self._started += 1
        self._calls.put((task.fn, args, kwargs, future))
        return await future

    @override
    async def close(self) -> None:
        # Idle threads exit at their sentinel; a busy one (its job handed back) exits when its call returns.
        self._closed = True
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._calls.put(None)

    def _limit(self) -> int:
        """``concurrency`` plus one thread per abandoned call (cancelled while its body runs). Call under _lock."""
        return self._size + sum(future.cancelled() for future in self._running)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args, kwargs, future = call
            result: Any = None
            error: BaseException | None = None
            with self._lock:  # checked and marked together, so _limit sees every call that started
                start = not future.cancelled()  # nobody awaits a call cancelled before it started
                if start:
                    self._running.add(future)
            if start:
                try:
                    result = fn(*args, **kwargs)
                except StopIteration as exc:  # a future refuses StopIteration (it would never resolve)
                    error = RuntimeError(f"the task raised StopIteration: {exc!r}")
                    error.__cause__ = exc
                except BaseException as exc:
                    error = exc
            with self._lock:
                self._running.discard(future)
                self._done.append((future, result, error))
                first = len(self._done) == 1
                # Over the limit only once an abandoned call (this thread's) has ended: hand its slot back.
                retire = self._threads > self._size and self._threads > self._limit()
                if retire:
                    self._threads -= 1
            if first:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                    future.get_loop().call_soon_threadsafe(self._deliver)
            if retire:
                return
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
