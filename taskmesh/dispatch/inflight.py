"""What a worker has in flight: each queue's state, the jobs it leased (started, or leased ahead and waiting
for a slot) and the outcomes it has yet to send.

Every part of the worker reads and changes this on the event loop, except the three methods the lease keeper
calls on its own thread (:meth:`Inflight.leases`, :meth:`Inflight.lease_lost`, :meth:`Inflight.cancel_requested`)
and :meth:`Inflight.report`, which a task may call from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from ..job import Job
from ..settings import Settings
from ..store.keys import QueueKeys
from ..store.scripts import Leased, Update
from .leases import Lease
from .retry import Streak

log = logging.getLogger("taskmesh.worker")
#: A worker leases one batch ahead only while its jobs take less than this on average.
PREFETCH_BELOW = 0.005
#: A job leased ahead that has not started after this long is handed back for idle workers.
PREFETCH_MAX_WAIT = 0.5


@dataclass(slots=True)
class QueueState:
    """One queue as this worker sees it: the updates to send in its next step, and what its last step said."""

    keys: QueueKeys
    updates: list[Update] = field(default_factory=list)
    ready: bool = True  # a lease may find jobs
    next_due: float | None = None  # seconds until a delayed job is due or a rate limit lets one start
    throttled: bool = False  # a rate limit keeps jobs that are waiting from starting (they start at next_due)
    refused: Streak = field(init=False)  # Redis refuses this queue's steps: no step until refused.until
    leasing: Streak = field(init=False)  # Redis is out of memory or refuses the lease: no lease until .until
    events: Streak = field(init=False)  # Redis refuses the queue's events (the changes are made)
    swept: Streak = field(init=False)  # the stalled-job sweep fails

    def __post_init__(self) -> None:
        self.refused = Streak(f"queue {self.keys.queue}: Redis refuses the worker's step")
        self.leasing = Streak(f"queue {self.keys.queue}: nothing can be leased")
        self.events = Streak(f"queue {self.keys.queue}: Redis refuses the events (the jobs go on; the events are lost)")
        self.swept = Streak(f"queue {self.keys.queue}: stalled-job sweep failed")


@dataclass(slots=True)
class Run:
    """A job this worker leased: leased ahead and not started (``leased`` set), or started (``task`` set)."""

    queue: QueueState
    job: Job
    leased: Leased | None = None
    task: asyncio.Task[None] | None = None
    prefetched_at: float = 0.0  # when it was leased ahead (loop time)
    started: float = 0.0
    cancelling: bool = False  # its cancellation was requested: the run is being stopped


class Inflight:
    """The worker's runs, its jobs leased ahead (``prefetched``, oldest first) and its queues (``queues``, in
    ``settings.queues`` order). ``wake`` is set whenever something here changed that the dispatcher acts on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queues = [QueueState(QueueKeys.of(settings.prefix, queue)) for queue in settings.queues]
        self.runs: dict[str, Run] = {}
        self.prefetched: deque[Run] = deque()
        self.wake = asyncio.Event()
        #: Stopping: lease nothing more. Handing back: the grace period is over, what still runs is released.
        self.stopping = False
        self.handing_back = False
        #: A one-job lease is queued behind the listener's wait: a job may still arrive (see ``listener.py``).
        self.lease_pending = False
        # Running average of job durations (seconds); starts high so nothing is leased ahead at first.
        self.job_seconds = 1.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0

    def bind(self) -> None:
        """Take the running loop as the worker's (reports from other threads are passed to it)."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()

    # -- slots ---------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.settings.concurrency - (len(self.runs) - len(self.prefetched))

    def room(self) -> int:
        """Jobs to lease now: free slots, plus a batch ahead while recent jobs are short (see ``prefetch``)."""
        if self.stopping:
            return 0
        return self.settings.concurrency + self.prefetch() - len(self.runs)

    def prefetch(self) -> int:
        # Leasing ahead lets the next round trip overlap with running short jobs; long jobs are
        # never kept in one worker's prefetch while another worker idles.
        return self.settings.concurrency if self.job_seconds < PREFETCH_BELOW else 0

    def add(self, queue: QueueState, leased: Leased, now: float) -> None:
        """A job a step leased: it waits in ``prefetched`` until a slot takes it."""
        report = functools.partial(self.report, leased.token)
        run = Run(queue, Job(leased.id, queue.keys.queue, leased.task, leased.attempt, leased.token, report))
        run.leased = leased
        run.prefetched_at = now
        self.runs[leased.id] = run
        self.prefetched.append(run)

    # -- outcomes ------------------------------------------------------------------

    def finish(self, run: Run, update: Update) -> None:
        """The run is over: its outcome waits for its queue's next step."""
        if self.runs.get(run.job.id) is run:  # not a newer run of the same job
            del self.runs[run.job.id]
        if run.started:
            assert self.loop is not None
            took = self.loop.time() - run.started
            self.job_seconds += (took - self.job_seconds) * 0.1
        run.queue.updates.append(update)
        self.wake.set()

    def report(self, token: int, kind: str, job_id: str, value: str) -> None:
        """Called by ``Job.progress``/``Job.log``, from the loop or a task thread.

        Sent under the token of the run that reported: a stale run (timed out, or its lease
        lost and the job leased again) is dropped here, and refused by the script anyway.
        """
        if threading.get_ident() != self.loop_thread:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.report, token, kind, job_id, value)
            return
        run = self.runs.get(job_id)
        if run is not None and run.job.token == token:
            run.queue.updates.append(Update(kind, job_id, token, value))
            self.wake.set()

    # -- handing back ----------------------------------------------------------------

    def release_prefetched(self) -> None:
        """Hand back the jobs leased ahead that never started (the worker is stopping)."""
        while self.prefetched:
            run = self.prefetched.popleft()
            self.finish(run, Update("r", run.job.id, run.job.token))

    def release_stale_prefetch(self) -> None:
        """Hand back jobs leased ahead that long jobs kept from starting, and stop leasing ahead for now."""
        assert self.loop is not None
        now = self.loop.time()
        stale = [run for run in self.prefetched if now - run.prefetched_at > PREFETCH_MAX_WAIT]
        if stale:
            self.job_seconds = max(self.job_seconds, PREFETCH_BELOW)
            for run in stale:
                self.prefetched.remove(run)
                self.finish(run, Update("r", run.job.id, run.job.token))

    def hand_back(self) -> None:
        """Grace period over: cancel what still runs; each cancelled job is released, attempt unspent.
        Outcomes Redis still refuses are given up (their jobs run again once their leases expire)."""
        self.handing_back = True
        self.wake.set()
        for run in list(self.runs.values()):
            if run.task is not None:
                run.task.cancel()
                # A task cancelled before its first step never runs the attempt's handlers.
                run.task.add_done_callback(functools.partial(self._never_started, run))

    def cancel_run(self, run: Run) -> None:
        """The job's cancellation was requested: flag it, and stop its run (async tasks are cancelled;
        a sync body is abandoned on its thread and its outcome dropped)."""
        if run.cancelling:
            return
        run.cancelling = True
        run.job.cancelled = True
        log.info("job %s: cancellation requested; stopping it", run.job.id)
        if run.leased is not None:  # leased ahead, not started
            self.prefetched.remove(run)
            self.finish(run, Update("x", run.job.id, run.job.token))
        elif run.task is not None:
            run.task.cancel()
            run.task.add_done_callback(functools.partial(self._never_started, run))

    def _never_started(self, run: Run, task: asyncio.Task[None]) -> None:
        # An attempt itself never ends cancelled; a run both handed back and cancelled is reported once.
        if task.cancelled() and self.runs.get(run.job.id) is run:
            kind = "x" if run.cancelling else "r"
            self.finish(run, Update(kind, run.job.id, run.job.token))

    # -- the lease keeper's thread ------------------------------------------------------

    def leases(self) -> list[Lease]:
        """The leases this worker holds: running jobs, and finished ones whose outcome waits to be sent
        (Redis refused it for now). Called on the lease keeper's thread, so it copies first."""
        while True:
            try:
                leases = [(run.queue.keys.queue, run.job.id, run.job.token) for run in list(self.runs.values())]
            except RuntimeError:  # the loop changed the dict while it was being copied
                continue
            for queue in self.queues:
                leases += [(queue.keys.queue, u.id, u.token) for u in list(queue.updates) if u.kind not in "pl"]
            return leases

    def lease_lost(self, job_id: str, token: int) -> None:
        """Called on the lease keeper's thread: this run's lease is another holder's now."""
        run = self.runs.get(job_id)
        if run is not None and run.job.token == token and not run.job.lease_lost:
            run.job.lease_lost = True
            log.warning("job %s: lease lost to another holder; its result will be refused", job_id)

    def cancel_requested(self, queue: str, job_id: str, token: int) -> None:
        """Called on the lease keeper's thread: the job's cancellation was requested; stop it on the loop."""
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs any more
            self.loop.call_soon_threadsafe(self._cancel_token, queue, job_id, token)

    def _cancel_token(self, queue: str, job_id: str, token: int) -> None:
        run = self.runs.get(job_id)
        if run is not None and run.job.token == token and run.job.queue == queue:
            self.cancel_run(run)
