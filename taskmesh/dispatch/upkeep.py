"""Upkeep beside the hot path: start-up checks and registration, the heartbeat, the stalled-job sweep, lease
renewal (``leases.py``, on a thread of its own, which a busy loop cannot starve), the event bus and the
scheduler (``scheduler.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from ..registry import Registry
from ..settings import Settings
from ..sinks.bus import EventBus
from ..store import RedisError, ResponseError, WorkerStore
from ..store.worker import UNREACHABLE_ERRORS
from .checks import check_access, check_server
from .inflight import Inflight
from .leases import LeaseKeeper
from .lifecycle import cancel_tasks
from .retry import RedisRetry, Streak
from .scheduler import Scheduler
from .stats import WorkerStats

log = logging.getLogger("taskmesh.worker")


class Upkeep:
    """Starts the worker (checks, registration, limits, schedules) and keeps it going until it stops.

    A step Redis refuses for now at start-up (out of memory, say) is tried again in the background: meanwhile
    the worker still records results and recovers stalled jobs.
    """

    def __init__(
        self,
        worker_id: str,
        registry: Registry,
        settings: Settings,
        store: WorkerStore,
        inflight: Inflight,
        stats: WorkerStats,
        retrying: RedisRetry,
        *,
        bus: EventBus | None = None,
        scheduling: bool = True,
    ) -> None:
        self.worker_id = worker_id
        self.registry = registry
        self.settings = settings
        self.store = store
        self.inflight = inflight
        self.stats = stats
        self.retrying = retrying
        self.bus = bus
        self.scheduling = scheduling and settings.scheduler
        self.leases = LeaseKeeper(settings, inflight.leases, inflight.lease_lost, inflight.cancel_requested)
        #: The server's persistence mode, once the start-up checks read it.
        self.persistence = "unknown"
        self._scheduler: Scheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = False
        self._renewing = False
        self._joined = False
        self._heartbeat = Streak("worker heartbeat failed")
        self._syncing = Streak("scheduler: cannot store the schedules tasks declare")
        self._joining = Streak("event bus: cannot join the queues' event streams")

    @property
    def scheduler(self) -> Scheduler:
        """This worker's scheduler loop (made at first use)."""
        if self._scheduler is None:
            self._scheduler = Scheduler(self.settings, self.store)
        return self._scheduler

    async def start(self, stack: AsyncExitStack) -> None:
        """Check the server and the user's permissions, register, publish the tasks' limits, then start the
        lease renewals, the heartbeat and the sweep, the event bus and the scheduler."""
        stack.push_async_callback(self._close)
        store = self.store
        self.persistence = await self.retrying(lambda: check_server(store))
        await self.retrying(lambda: check_access(store, self.settings.queues))
        self._registered = True
        await self._accepted(self._heartbeat, self._register)  # refused: the heartbeat tries again
        await self.retrying(self._publish_limits)
        sync = functools.partial(self.scheduler.sync, self.registry, self.settings.prune_schedules)
        synced = self.scheduling and await self._accepted(self._syncing, sync)  # a schedule a task may not have raises
        self.leases.start()
        self._renewing = True
        self._spawn(self._heartbeat_loop(), "taskmesh-heartbeat")
        self._spawn(self._sweep_loop(), "taskmesh-sweep")
        bus = self.bus
        self._joined = bus is not None  # the bus is stopped from here on, joined or not
        if bus is not None and not await self._accepted(self._joining, bus.start):
            self._spawn(self._until_accepted(self._joining, bus.start), "taskmesh-bus")
        if self.scheduling:
            self._spawn(self._schedule(synced, sync), "taskmesh-scheduler")

    async def _close(self) -> None:
        if self._renewing:
            await asyncio.to_thread(self.leases.stop)
        await cancel_tasks(self._tasks, self.worker_id)
        if self.bus is not None and self._joined:
            await self.bus.stop()
        if self._registered:
            with contextlib.suppress(*UNREACHABLE_ERRORS):
                await self.store.unregister_worker(self.worker_id)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    async def _accepted(self, streak: Streak, step: Callable[[], Awaitable[None]]) -> bool:
        """Run a start-up step; False if Redis refused it (out of memory, say: the worker goes on without it)."""
        try:
            await self.retrying(step)
        except ResponseError as exc:
            streak.failed(exc)
            return False
        streak.ok()
        return True

    async def _until_accepted(self, streak: Streak, step: Callable[[], Awaitable[None]]) -> None:
        while not await self._accepted(streak, step):
            await asyncio.sleep(max(streak.until - time.monotonic(), 0.0))

    async def _schedule(self, synced: bool, sync: Callable[[], Awaitable[None]]) -> None:
        if not synced:
            await self._until_accepted(self._syncing, sync)
        await self.scheduler.run()

    async def _publish_limits(self) -> None:
        """Store the limits tasks declare (``@task(rate_limit=..., max_active=...)``) on every queue served."""
        for task in self.registry:
            if task.limit is None:
                continue
            for queue in self.settings.queues:
                await self.store.set_limit(queue, task.name, task.limit.to_json())

    async def _register(self) -> None:
        """The heartbeat: this worker is live for three renew intervals (by the Redis clock)."""
        await self.store.register_worker(self.worker_id, self.settings.queues, self.settings.renew_interval * 3000)

    async def _heartbeat_loop(self) -> None:
        # Leases are renewed by the LeaseKeeper's thread, which a task hogging this loop cannot starve.
        while True:
            await asyncio.sleep(self.settings.renew_interval)
            try:
                await self.retrying(self._register)
            except RedisError as exc:  # e.g. BUSY, READONLY, OOM: try again next beat
                self._heartbeat.failed(exc)
            else:
                self._heartbeat.ok()
            self.inflight.release_stale_prefetch()

    async def _sweep_loop(self) -> None:
        store = self.store
        while True:
            await asyncio.sleep(self.settings.sweep_interval * random.uniform(0.8, 1.2))
            for queue in self.inflight.queues:
                try:
                    recovered, lost = await self.retrying(lambda q=queue: store.sweep(q.keys.queue))  # type: ignore[misc]
                except RedisError as exc:  # e.g. BUSY, READONLY: sweep again later
                    queue.swept.failed(exc)
                    continue
                queue.swept.ok()
                if recovered or lost:
                    self.stats.recovered += len(recovered)
                    log.warning(
                        "queue %s: %d stalled job(s) back to waiting, %d failed as lost",
                        queue.keys.queue,
                        len(recovered),
                        len(lost),
                    )
                    queue.ready = True
                    self.inflight.wake.set()
