"""One worker process: the parts below, composed on one asyncio loop.

Data flow: the dispatcher (``dispatcher.py``) leases jobs and sends their outcomes, one ``step`` script call
per queue; each leased job is one attempt (``attempt.py``) on its task's runner, whose outcome a pure function
(``runners/outcome.py: classify``) turns into the update the next step sends. What is in flight between them
is ``inflight.py``'s. Beside this hot path: the wake-up listener (``listener.py``), which blocks on the queues'
wake-up lists while the dispatcher is idle, and the upkeep (``upkeep.py``): start-up checks, heartbeat,
stalled-job sweep, lease renewal (``leases.py``, on a thread of its own) and the scheduler (``scheduler.py``).
Each part registers its own clean-up on the worker's ``AsyncExitStack`` (``lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack

from ..plugins import plugin_manager
from ..registry import Registry
from ..runners.base import Runner, RunnerRegistry
from ..settings import Settings
from ..sinks.base import Sink, SinkRegistry
from ..sinks.bus import EventBus
from ..store import WorkerStore
from ..store.worker import UNREACHABLE_ERRORS
from .attempt import Attempts
from .dispatcher import Dispatcher
from .inflight import Inflight
from .lifecycle import Part
from .listener import Listener
from .retry import RedisRetry
from .scheduler import Scheduler
from .stats import WorkerStats
from .upkeep import Upkeep

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("taskmesh.worker")


class Worker:
    """Leases jobs from ``settings.queues`` and runs them with the registered runners.

    ``burst=True`` runs everything due, then returns. Otherwise ``run()``
    returns after :meth:`stop` (SIGTERM/SIGINT in the CLI): leasing stops,
    running jobs get ``grace_period`` seconds, the rest are handed back.
    """

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        runners: Mapping[str, Runner],
        *,
        burst: bool = False,
        worker_id: str | None = None,
        sinks: Mapping[str, Sink] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.runners = runners
        self.sinks = dict(sinks or {})
        self.burst = burst
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self.started = asyncio.Event()
        bus = EventBus(settings, self.sinks, self.stats, self.id) if self.sinks else None
        self._store = store = WorkerStore(settings)
        self._retrying = retrying = RedisRetry(settings)
        self._inflight = inflight = Inflight(settings)
        attempts = Attempts(registry, runners, inflight)
        self._dispatcher = Dispatcher(self.id, settings, store, inflight, attempts, self.stats, retrying, burst=burst)
        self._listener = Listener(self.id, settings, store, inflight, self._dispatcher)
        self._upkeep = Upkeep(
            self.id, registry, settings, store, inflight, self.stats, retrying, bus=bus, scheduling=not burst
        )

    @classmethod
    def create(
        cls,
        registry: Registry,
        settings: Settings,
        *,
        burst: bool = False,
        plugins: Iterable[object] = (),
        entry_points: bool = True,
    ) -> Worker:
        """Load plugins, configure them and build the runners every task needs and the sinks the settings
        enable (errors here, not at the first job)."""
        pm = plugin_manager(plugins, entry_points=entry_points, allow=settings.plugins, block=settings.disable_plugins)
        pm.hook.taskmesh_configure(settings=settings)
        register = RunnerRegistry()
        pm.hook.taskmesh_register_runners(register=register)
        sinks = SinkRegistry()
        pm.hook.taskmesh_register_sinks(register=sinks)
        enabled = sinks.build(settings, settings.sinks)
        runners = register.build(settings, sorted({task.runner for task in registry} | {"inline"}))
        return cls(registry, settings, runners, burst=burst, sinks=enabled)

    @property
    def scheduler(self) -> Scheduler:
        """This worker's scheduler loop."""
        return self._upkeep.scheduler

    def stop(self) -> None:
        """Stop leasing; running jobs get the grace period. Safe to call from any thread.

        From another thread it returns once the worker has stopped leasing.
        """
        inflight = self._inflight
        loop = inflight.loop
        if loop is not None and threading.get_ident() != inflight.loop_thread:
            if not loop.is_running():  # the worker has already stopped
                return
            stopping = self._stop()
            try:
                done = asyncio.run_coroutine_threadsafe(stopping, loop)
            except RuntimeError:  # the loop closed meanwhile
                stopping.close()
                return
            # Cancelled: the worker finished meanwhile and its loop cancelled what was left.
            with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                done.result(timeout=5)
            return
        if not inflight.stopping:
            log.info("worker %s stopping: %d job(s) running", self.id, len(inflight.runs))
            self._retrying.give_up_at = time.monotonic() + self.settings.grace_period
        inflight.stopping = True
        self._listener.stop()
        inflight.wake.set()

    async def _stop(self) -> None:
        self.stop()
        await self._listener.stopped()

    async def run(self) -> WorkerStats:
        """Start the runners and the parts, dispatch until stopped (or, in a burst, until nothing is due),
        then stop every part that started, in reverse order; returns the stats."""
        async with AsyncExitStack() as stack:
            await self._start_runners(stack)
            self._inflight.bind()
            stack.push_async_callback(self._store.aclose)
            parts: tuple[Part, ...] = (self._upkeep, self._listener)
            for part in parts:
                await part.start(stack)
            self.started.set()
            log.info(
                "worker %s ready: queues %s, concurrency %d, redis persistence %s",
                self.id,
                ",".join(self.settings.queues),
                self.settings.concurrency,
                self._upkeep.persistence,
            )
            try:
                await self._dispatch()
            except UNREACHABLE_ERRORS:
                if self._retrying.give_up_at is None:  # only a stopping worker gives up on Redis (see retry.py)
                    raise
        return self.stats

    async def _dispatch(self) -> None:
        await self._dispatcher.run()

    async def _start_runners(self, stack: AsyncExitStack) -> None:
        """Call each runner's ``start(tasks)`` with the tasks that use it (see ``runners/base.py``); every runner
        is closed when the worker stops, or at once if one refuses to start."""
        for runner in reversed(list(self.runners.values())):  # closed in the order they were built
            stack.push_async_callback(runner.close)
        for name, runner in self.runners.items():
            await runner.start([task for task in self.registry if task.runner == name])
