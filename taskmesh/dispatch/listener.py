"""The wake-up listener: while the dispatcher is idle, block on the queues' wake-up lists instead of polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from ..settings import Settings
from ..store import RedisError, ResponseError, Wakeup, WorkerStore
from ..store.worker import UNREACHABLE_ERRORS
from .dispatcher import Dispatcher
from .inflight import Inflight
from .lifecycle import cancel_tasks
from .retry import Streak

log = logging.getLogger("taskmesh.worker")


class Listener:
    """Waits for a wake-up each time the dispatcher goes idle, then has it look at every queue again.

    An idle worker with one queue and a free slot queues a one-job lease behind its wait (see :meth:`_listen`):
    ``inflight.lease_pending`` says so, and :meth:`stop` then ends the wait early so that nothing is leased.
    """

    def __init__(
        self, worker_id: str, settings: Settings, store: WorkerStore, inflight: Inflight, dispatcher: Dispatcher
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.store = store
        self.inflight = inflight
        self.dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None
        self._unblocking: asyncio.Future[None] | None = None
        self._closing = False
        self._failing = Streak("wake-up listener")

    async def start(self, stack: AsyncExitStack) -> None:
        self._task = asyncio.create_task(self._main(), name="taskmesh-waker")
        stack.push_async_callback(self._close)

    def stop(self) -> None:
        """The worker is stopping: end a wait that has a lease queued behind it (the lease then finds no claim);
        stop any other wait now, so the wake-ups sent while this worker winds down go to others."""
        if self.inflight.lease_pending:
            self._unblocking = asyncio.ensure_future(self._unblock())
        elif self._task is not None:
            self._task.cancel()

    async def stopped(self) -> None:
        """Returns once a wait :meth:`stop` ended early is over."""
        if self._unblocking is not None:
            await self._unblocking

    async def _close(self) -> None:
        self._closing = True
        self.dispatcher.idle.set()
        if self._task is not None:
            await cancel_tasks([self._task], self.worker_id)

    async def _unblock(self) -> None:
        """``CLIENT UNBLOCK`` the listener's connection; repeated briefly in case it lands before the wait does."""
        for _ in range(100):
            if not self.inflight.lease_pending or self.store.waiter_id is None:
                return
            try:
                if await self.store.unblock_waiter():
                    return
            except UNREACHABLE_ERRORS:
                pass
            except ResponseError as exc:  # e.g. an ACL user without CLIENT UNBLOCK
                log.warning("cannot end the wake-up wait early (%s); stopping waits for it to time out", exc)
                return
            await asyncio.sleep(0.01)

    async def _main(self) -> None:
        store, inflight, idle = self.store, self.inflight, self.dispatcher.idle
        queues = [q.keys.queue for q in inflight.queues]
        while not self._closing:
            await idle.wait()
            idle.clear()
            if self._closing:
                return
            dues = [q.next_due for q in inflight.queues if q.next_due is not None]
            timeout = min([self.settings.idle_timeout, *dues])
            popped = None
            try:
                popped = await self._listen(queues, max(timeout, 0.001))
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                await asyncio.sleep(self._failing.failed(exc, logging.WARNING))
            else:
                self._failing.ok()
            if popped and (inflight.stopping or inflight.room() <= 0):
                # This worker cannot take a job now (stopping, or filled up while it waited):
                # pass the wake-up on to another idle worker.
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    await store.pass_on(popped)
            if inflight.stopping:
                return
            # Wait again only when the dispatcher, having looked, is idle again: a request made
            # while this wait was on is stale (it knew nothing of what the wake-up announced).
            idle.clear()
            for queue in inflight.queues:
                queue.ready = True
            inflight.wake.set()

    async def _listen(self, queues: list[str], timeout: float) -> Wakeup | None:
        """Wait for a wake-up. Returns the token popped, or None (timed out, or taken by the queued lease).

        With one queue and a free slot, a one-job ``step`` is queued behind the wait on the same
        connection (``WorkerStore.wait_and_lease``): an idle worker's next job then costs no extra
        round trip, and :meth:`stop` ends the wait with ``CLIENT UNBLOCK`` so nothing is leased.
        Not on a cluster, whose client cannot pin a wait and a step to one connection: there it is a
        plain wait per queue (``WorkerStore.wait_for_wakeup``).
        """
        store, inflight = self.store, self.inflight
        if self.dispatcher.burst or len(inflight.queues) != 1 or inflight.room() <= 0 or store.on_cluster:
            return await store.wait_for_wakeup(queues, timeout)
        queue = inflight.queues[0]
        inflight.lease_pending = True
        try:
            stepped = await store.wait_and_lease(queue.keys.queue, self.worker_id, timeout)
        finally:
            inflight.lease_pending = False
            inflight.wake.set()
        if stepped is not None:  # None: the step did not run (its script was missing, and is loaded now)
            self.dispatcher.apply_step(queue, 1, [], stepped)
        return None
