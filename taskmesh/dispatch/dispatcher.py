"""Leasing and dispatch: the worker's hot path.

Per queue, one ``step`` script call sends every pending update (results, progress) and leases as many jobs as
there are free slots, so finishing a batch and fetching the next costs one round trip. Leased jobs wait in
``Inflight.prefetched`` until a slot takes them; :class:`~taskmesh.dispatch.attempt.Attempts` runs them.
"""

from __future__ import annotations

import asyncio
import logging

from ..settings import Settings
from ..store import ResponseError, Stepped, WorkerStore
from ..store.scripts import Update
from .attempt import Attempts
from .inflight import Inflight, QueueState
from .retry import RedisRetry
from .stats import WorkerStats

log = logging.getLogger("taskmesh.worker")


class Dispatcher:
    """Steps the queues until the worker stops (or, in a burst, until nothing is due).

    ``idle`` is set when the dispatcher has free slots and nothing to step: the listener then waits for a wake-up.
    """

    def __init__(
        self,
        worker_id: str,
        settings: Settings,
        store: WorkerStore,
        inflight: Inflight,
        attempts: Attempts,
        stats: WorkerStats,
        retrying: RedisRetry,
        *,
        burst: bool = False,
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.store = store
        self.inflight = inflight
        self.attempts = attempts
        self.stats = stats
        self.retrying = retrying
        self.burst = burst
        self.idle = asyncio.Event()
        self._stepping: asyncio.Task[None] | None = None
        self._turn = 0  # the queue whose results are sent first in the next step
        self._step_error: BaseException | None = None

    async def run(self) -> None:
        """Step until the worker stopped and every outcome is sent (or the grace period is over), or, in a burst,
        until nothing runs and nothing is due. Raises what a step raised (Redis unreachable past the grace)."""
        inflight, queues = self.inflight, self.inflight.queues
        grace: asyncio.TimerHandle | None = None
        while True:
            if self._step_error is not None:
                raise self._step_error
            self.start_prefetched()
            if self._stepping is None:
                self._launch_step()
            if self._stepping is None and not inflight.prefetched:
                if inflight.stopping:
                    # Outcomes Redis refused for now are tried until the grace period is over.
                    kept = any(queue.updates for queue in queues)
                    if not inflight.runs and not inflight.lease_pending and (inflight.handing_back or not kept):
                        return
                    if grace is None:
                        grace = asyncio.get_running_loop().call_later(self.settings.grace_period, inflight.hand_back)
                elif self.burst and not inflight.runs and not self._due_now():
                    return
                elif len(inflight.runs) < self.settings.concurrency:
                    self.idle.set()
            inflight.wake.clear()
            if not self._can_progress():
                await inflight.wake.wait()

    def _can_progress(self) -> bool:
        inflight = self.inflight
        if self._step_error is not None or (inflight.prefetched and inflight.free_slots() > 0):
            return True
        if self._stepping is not None:
            return False
        room = inflight.room()
        return any(_may_step(q) and (q.updates or (room > 0 and _may_lease(q))) for q in inflight.queues)

    def _due_now(self) -> bool:
        """A job is due now, or waiting for a rate limit (a burst worker waits for it too)."""
        return any(q.next_due == 0 or q.throttled for q in self.inflight.queues)

    # -- steps ------------------------------------------------------------------------

    def _launch_step(self) -> None:
        """Start the next step: results first, queue by queue in turn (none waits behind a busy one),
        then leasing, from the first queue in ``settings.queues`` order that may have jobs."""
        queues = self.inflight.queues
        room = max(self.inflight.room(), 0)
        count = len(queues)
        for i in range(count):
            queue = queues[(self._turn + i) % count]
            if queue.updates and _may_step(queue):
                self._turn = (self._turn + i + 1) % count
                preferred = any(_may_lease(q) for q in queues[: queues.index(queue)])
                self._begin_step(queue, 0 if preferred or queue.leasing.waiting else room)
                return
        if room > 0:
            for queue in queues:
                if _may_step(queue) and _may_lease(queue):
                    self._begin_step(queue, room)
                    return

    def _begin_step(self, queue: QueueState, want: int) -> None:
        self._stepping = asyncio.create_task(self._step(queue, want))
        self._stepping.add_done_callback(self._stepped)

    def _stepped(self, task: asyncio.Task[None]) -> None:
        self._stepping = None
        if not task.cancelled() and task.exception() is not None:
            self._step_error = task.exception()
        self.inflight.wake.set()

    async def _step(self, queue: QueueState, want: int) -> None:
        updates, queue.updates = queue.updates, []
        try:
            store, name, worker_id = self.store, queue.keys.queue, self.worker_id
            stepped = await self.retrying(lambda: store.step(name, worker_id, want, updates))
        except ResponseError as exc:
            # Redis refused the step before it changed anything (a key of the wrong type, a permission
            # taken away): keep the outcomes, whose leases are renewed meanwhile, and try again later.
            queue.updates[:0] = updates
            self._wake_after(queue.refused.failed(exc))
            return
        queue.refused.ok()
        self.apply_step(queue, want, updates, stepped)

    def _wake_after(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.inflight.wake.set)

    def apply_step(self, queue: QueueState, want: int, updates: list[Update], stepped: Stepped) -> None:
        """Account for a step's result: refused updates, the queue's state, and the jobs it leased."""
        leased, next_due = stepped.leased, stepped.next_due
        for update, ok in zip(updates, stepped.accepted, strict=True):
            self._account(update, ok)
        if stepped.events_refused:
            queue.events.failed(stepped.events_refused)
        elif updates or leased:  # events were sent
            queue.events.ok()
        if stepped.lease_refused:
            self._wake_after(queue.leasing.failed(stepped.lease_refused, logging.WARNING))
            return
        if want > 0:
            queue.leasing.ok()
            queue.ready = len(leased) == want
            queue.throttled = stepped.held
            queue.next_due = next_due
        elif next_due is not None:
            # A step that only flushed updates learned nothing about what is waiting (nor about rate
            # limits): it keeps the earlier time to look again, unless a delayed job is due sooner.
            queue.next_due = next_due if queue.next_due is None else min(queue.next_due, next_due)
        if next_due == 0:
            queue.ready = True
        if leased:
            now = asyncio.get_running_loop().time()
            self.stats.leased += len(leased)
            for job in leased:
                self.inflight.add(queue, job, now)
        self.start_prefetched()

    def start_prefetched(self) -> None:
        """Start leased jobs in free slots; a stopping worker hands back the ones leased ahead.

        A job leased by a step that was in flight when the stop came is started: its
        "active" event is out, so it runs (within the grace period) like the others.
        """
        inflight = self.inflight
        free = inflight.free_slots()
        while free > 0 and inflight.prefetched and not inflight.handing_back:
            self.attempts.start(inflight.prefetched.popleft())
            free -= 1
        if inflight.stopping:
            inflight.release_prefetched()

    def _account(self, update: Update, ok: bool) -> None:
        stats = self.stats
        if not ok:
            stats.refused += 1
            run = self.inflight.runs.get(update.id)
            if run is not None and run.job.token == update.token:
                run.job.lease_lost = True
            if update.kind in "cf":
                log.warning("job %s: result refused, the lease was lost to another holder", update.id)
        elif update.kind == "c":
            stats.completed += 1
        elif update.kind == "f" and update.delay_ms >= 0:
            stats.retried += 1
        elif update.kind == "f":
            stats.failed += 1
        elif update.kind == "r":
            stats.released += 1
        elif update.kind == "x":
            stats.cancelled += 1
        elif update.kind == "d":
            stats.deferred += 1


def _may_step(queue: QueueState) -> bool:
    return not queue.refused.waiting


def _may_lease(queue: QueueState) -> bool:
    return queue.ready and not queue.leasing.waiting
