"""One worker process: a dispatcher loop plus upkeep timers, on one asyncio loop.

Hot path: the dispatcher sends every pending update (results, progress) and
leases as many jobs as there are free slots in one ``step`` script call per
queue, so finishing a batch and fetching the next costs one round trip.
Upkeep (heartbeat, stalled-job sweep, the wake-up listener) runs beside it;
leases are renewed from a thread of their own (``leases.py``), which a busy loop cannot starve.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import MAX_DELAY_SECONDS, Cancelled, PayloadError, Retry, SlowDown, UnknownTaskError, Unrecoverable
from ..job import Job, decode_payload
from ..plugins import plugin_manager
from ..registry import Registry
from ..runners.base import Runner, RunnerRegistry
from ..settings import Settings
from ..sinks.base import Sink, SinkRegistry
from ..sinks.bus import EventBus
from ..store import RedisError, ResponseError, Stepped, Wakeup, WorkerStore
from ..store.keys import QueueKeys
from ..store.scripts import Leased, Update
from ..store.worker import UNREACHABLE_ERRORS
from ..task import Task
from .checks import check_access, check_server
from .leases import Held, LeaseKeeper
from .outcome import JobTimeoutError, error_json, result_json
from .retry import RedisRetry, Streak
from .scheduler import Scheduler

log = logging.getLogger("taskmesh.worker")
T = TypeVar("T")
#: A worker leases one batch ahead only while its jobs take less than this on average.
PREFETCH_BELOW = 0.005
#: A job leased ahead that has not started after this long is handed back for idle workers.
PREFETCH_HOLD = 0.5


@dataclass(slots=True)
class WorkerStats:
    """What one worker did: jobs leased, completed, failed for good, retried, handed back, results refused,
    stalled jobs it recovered, runs stopped on a cancel request, and jobs deferred by ``SlowDown``;
    events its sinks dropped (a full buffer), stream entries skipped as malformed, and sink errors."""

    leased: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    refused: int = 0
    recovered: int = 0
    cancelled: int = 0
    deferred: int = 0
    events_dropped: int = 0
    events_skipped: int = 0
    sink_errors: int = 0


@dataclass(slots=True)
class _Queue:
    keys: QueueKeys
    updates: list[Update] = field(default_factory=list)
    ready: bool = True  # a lease may find jobs
    next_due: float | None = None  # seconds until a delayed job is due or a rate limit lets one start
    held: bool = False  # a rate limit holds back jobs that are waiting (they start at next_due)
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
class _Running:
    """A job this worker holds: leased and buffered (``leased`` set) or started (``task`` set)."""

    queue: _Queue
    job: Job
    leased: Leased | None = None
    task: asyncio.Task[None] | None = None
    buffered: float = 0.0
    started: float = 0.0
    cancelling: bool = False  # its cancellation was requested: the run is being stopped


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
        self._bus = EventBus(settings, self.sinks, self.stats, self.id) if self.sinks else None
        self._queues = [_Queue(QueueKeys.of(settings.prefix, q)) for q in settings.queues]
        self._running: dict[str, _Running] = {}
        self._buffer: deque[_Running] = deque()
        self._stepping: asyncio.Task[None] | None = None
        self._turn = 0  # the queue whose results are sent first in the next step
        self._step_error: BaseException | None = None
        self._listening = False  # the wake-up listener has a one-job lease queued behind its wait
        self._unblocking: asyncio.Future[None] | None = None
        # Running average of job durations (seconds); starts high so nothing is leased ahead at first.
        self._job_seconds = 1.0
        self._stopping = False
        self._retrying = RedisRetry(settings)
        self._releasing = False
        self._closing = False
        self._waker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._need_wakeup = asyncio.Event()
        self._listener = Streak("wake-up listener")
        self._heartbeat = Streak("worker heartbeat failed")
        self._syncing = Streak("scheduler: cannot store the schedules tasks declare")
        self._joining = Streak("event bus: cannot join the queues' event streams")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._store: WorkerStore | None = None
        self._scheduler: Scheduler | None = None
        self._leases = LeaseKeeper(settings, self._held, self._lease_lost, self._cancel_requested)
        self.started = asyncio.Event()

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

    # -- public --------------------------------------------------------------

    def stop(self) -> None:
        """Stop leasing; running jobs get the grace period. Safe to call from any thread.

        From another thread it returns once the worker has stopped leasing.
        """
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
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
        if not self._stopping:
            log.info("worker %s stopping: %d job(s) running", self.id, len(self._running))
            self._retrying.give_up_at = time.monotonic() + self.settings.grace_period
        self._stopping = True
        if self._listening:
            # A one-job lease is queued behind the wait: end the wait (the lease then finds no claim).
            self._unblocking = asyncio.ensure_future(self._unblock_listener())
        elif self._waker is not None:
            # Stop listening for wake-ups now, so the ones sent while this worker winds down go to others.
            self._waker.cancel()
        self._wake.set()

    async def _stop(self) -> None:
        self.stop()
        if self._unblocking is not None:
            await self._unblocking

    async def _unblock_listener(self) -> None:
        """``CLIENT UNBLOCK`` the listener's connection; repeated briefly in case it lands before the wait does."""
        assert self._store is not None
        for _ in range(100):
            if not self._listening or self._store.waiter_id is None:
                return
            try:
                if await self._store.unblock_waiter():
                    return
            except UNREACHABLE_ERRORS:
                pass
            except ResponseError as exc:  # e.g. an ACL user without CLIENT UNBLOCK
                log.warning("cannot end the wake-up wait early (%s); stopping waits for it to time out", exc)
                return
            await asyncio.sleep(0.01)

    async def run(self) -> WorkerStats:
        await self._start_runners()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        store = self._store = WorkerStore(self.settings)
        persistence, upkeep = await self._start_up()
        self.started.set()
        log.info(
            "worker %s ready: queues %s, concurrency %d, redis persistence %s",
            self.id,
            ",".join(self.settings.queues),
            self.settings.concurrency,
            persistence,
        )
        try:
            await self._dispatch()
        except UNREACHABLE_ERRORS:
            if self._retrying.give_up_at is None:  # only a stopping worker gives up on Redis (see retry.py)
                raise
        finally:
            await asyncio.to_thread(self._leases.stop)
            self._closing = True
            self._need_wakeup.set()
            for task in upkeep:
                task.cancel()
            # A cancel that lands inside a redis-py read can be swallowed; never wait forever for it.
            done, _ = await asyncio.wait(upkeep, timeout=1.0)
            for task in done:
                # An upkeep call may have given up on Redis while stopping (see retry.py); anything else is news.
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, UNREACHABLE_ERRORS):
                    log.error("worker %s: %s failed", self.id, task.get_name(), exc_info=error)
            if self._bus is not None:
                await self._bus.stop()
            await self._unregister()
            await store.aclose()
            for runner in self.runners.values():
                await runner.close()
        return self.stats

    @property
    def scheduler(self) -> Scheduler:
        """This worker's scheduler loop (made when the worker connects)."""
        if self._scheduler is None:
            assert self._store is not None, "the worker is not running"
            self._scheduler = Scheduler(self.settings, self._store)
        return self._scheduler

    async def _start_up(self) -> tuple[str, list[asyncio.Task[None]]]:
        """Check the server and the user's permissions, register, publish the tasks' limits, then start the
        lease renewals, the upkeep loops, the event bus and the scheduler. Returns the persistence mode and
        the upkeep tasks. A step Redis refuses for now (out of memory, say) is tried again in the background:
        meanwhile the worker still records results and recovers stalled jobs."""
        assert self._store is not None
        store = self._store
        persistence = await self._retrying(lambda: check_server(store))
        await self._retrying(lambda: check_access(store, self.settings.queues))
        await self._accepted(self._heartbeat, self._register)  # refused: the heartbeat tries again
        await self._retrying(self._publish_limits)
        scheduling = self.settings.scheduler and not self.burst
        sync = functools.partial(self.scheduler.sync, self.registry, self.settings.prune_schedules)
        synced = scheduling and await self._accepted(self._syncing, sync)  # a schedule a task may not have raises
        self._leases.start()
        self._waker = asyncio.create_task(self._waker_loop(), name="taskmesh-waker")
        upkeep = [
            asyncio.create_task(self._heartbeat_loop(), name="taskmesh-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="taskmesh-sweep"),
            self._waker,
        ]
        bus = self._bus
        if bus is not None and not await self._accepted(self._joining, bus.start):
            upkeep.append(asyncio.create_task(self._until_accepted(self._joining, bus.start), name="taskmesh-bus"))
        if scheduling:
            upkeep.append(asyncio.create_task(self._schedule(synced, sync), name="taskmesh-scheduler"))
        return persistence, upkeep

    async def _accepted(self, streak: Streak, step: Callable[[], Awaitable[None]]) -> bool:
        """Run a start-up step; False if Redis refused it (out of memory, say: the worker goes on without it)."""
        try:
            await self._retrying(step)
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

    async def _start_runners(self) -> None:
        """Call each runner's optional ``start(tasks)`` with the tasks that use it (see ``runners/base.py``);
        if one refuses, close them all."""
        try:
            for name, runner in self.runners.items():
                start = getattr(runner, "start", None)
                if start is not None:
                    await start([task for task in self.registry if task.runner == name])
        except BaseException:
            for runner in self.runners.values():
                await runner.close()
            raise

    # -- dispatcher ------------------------------------------------------------

    async def _dispatch(self) -> None:
        grace: asyncio.TimerHandle | None = None
        while True:
            if self._step_error is not None:
                raise self._step_error
            self._start_buffered()
            if self._stepping is None:
                self._launch_step()
            if self._stepping is None and not self._buffer:
                if self._stopping:
                    # Outcomes Redis refused for now are tried until the grace period is over.
                    kept = any(queue.updates for queue in self._queues)
                    if not self._running and not self._listening and (self._releasing or not kept):
                        return
                    if grace is None:
                        grace = asyncio.get_running_loop().call_later(self.settings.grace_period, self._hand_back)
                elif self.burst and not self._running and not self._due_now():
                    return
                elif len(self._running) < self.settings.concurrency:
                    self._need_wakeup.set()
            self._wake.clear()
            if not self._can_progress():
                await self._wake.wait()

    def _free_slots(self) -> int:
        return self.settings.concurrency - (len(self._running) - len(self._buffer))

    def _room(self) -> int:
        """Jobs to lease now: free slots, plus a batch ahead while recent jobs are short (see ``_prefetch``)."""
        if self._stopping:
            return 0
        return self.settings.concurrency + self._prefetch() - len(self._running)

    def _prefetch(self) -> int:
        # Leasing ahead lets the next round trip overlap with running short jobs; long jobs are
        # never held back in one worker's buffer while another worker idles.
        return self.settings.concurrency if self._job_seconds < PREFETCH_BELOW else 0

    def _can_progress(self) -> bool:
        if self._step_error is not None or (self._buffer and self._free_slots() > 0):
            return True
        if self._stepping is not None:
            return False
        room = self._room()
        return any(self._may_step(q) and (q.updates or (room > 0 and self._may_lease(q))) for q in self._queues)

    @staticmethod
    def _may_step(queue: _Queue) -> bool:
        return not queue.refused.waiting

    @staticmethod
    def _may_lease(queue: _Queue) -> bool:
        return queue.ready and not queue.leasing.waiting

    def _launch_step(self) -> None:
        """Start the next step: results first, queue by queue in turn (none waits behind a busy one),
        then leasing, from the first queue in ``settings.queues`` order that may have jobs."""
        room = max(self._room(), 0)
        count = len(self._queues)
        for i in range(count):
            queue = self._queues[(self._turn + i) % count]
            if queue.updates and self._may_step(queue):
                self._turn = (self._turn + i + 1) % count
                preferred = any(self._may_lease(q) for q in self._queues[: self._queues.index(queue)])
                self._begin_step(queue, 0 if preferred or queue.leasing.waiting else room)
                return
        if room > 0:
            for queue in self._queues:
                if self._may_step(queue) and self._may_lease(queue):
                    self._begin_step(queue, room)
                    return

    def _begin_step(self, queue: _Queue, want: int) -> None:
        self._stepping = asyncio.create_task(self._step(queue, want))
        self._stepping.add_done_callback(self._stepped)

    def _stepped(self, task: asyncio.Task[None]) -> None:
        self._stepping = None
        if not task.cancelled() and task.exception() is not None:
            self._step_error = task.exception()
        self._wake.set()

    def _due_now(self) -> bool:
        """A job is due now, or waiting for a rate limit (a burst worker waits for it too)."""
        return any(q.next_due == 0 or q.held for q in self._queues)

    async def _step(self, queue: _Queue, want: int) -> None:
        updates, queue.updates = queue.updates, []
        try:
            stepped = await self._call_step(queue, want, updates)
        except ResponseError as exc:
            # Redis refused the step before it changed anything (a key of the wrong type, a permission
            # taken away): keep the outcomes, whose leases are renewed meanwhile, and try again later.
            queue.updates[:0] = updates
            self._wake_after(queue.refused.failed(exc))
            return
        queue.refused.ok()
        self._apply_step(queue, want, updates, stepped)

    async def _call_step(self, queue: _Queue, want: int, updates: list[Update]) -> Stepped:
        assert self._store is not None
        store, name = self._store, queue.keys.queue
        return await self._retrying(lambda: store.step(name, self.id, want, updates))

    def _wake_after(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    def _apply_step(self, queue: _Queue, want: int, updates: list[Update], stepped: Stepped) -> None:
        """Account for a step's result: refused updates, the queue's state, and the jobs it leased."""
        leased, next_due = stepped.leased, stepped.next_due
        for update, ok in zip(updates, stepped.accepted, strict=True):
            self._account(queue, update, ok)
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
            queue.held = stepped.held
            queue.next_due = next_due
        elif next_due is not None:
            # A step that only flushed updates learned nothing about what is waiting (nor about rate
            # limits): it keeps the earlier time to look again, unless a delayed job is due sooner.
            queue.next_due = next_due if queue.next_due is None else min(queue.next_due, next_due)
        if next_due == 0:
            queue.ready = True
        now = asyncio.get_running_loop().time()
        for job in leased:
            self.stats.leased += 1
            report = functools.partial(self._report, job.token)
            running = _Running(queue, Job(job.id, queue.keys.queue, job.task, job.attempt, job.token, report))
            running.leased = job
            running.buffered = now
            self._running[job.id] = running
            self._buffer.append(running)
        self._start_buffered()

    def _start_buffered(self) -> None:
        """Start leased jobs in free slots; a stopping worker hands back the ones leased ahead.

        A job leased by a step that was in flight when the stop came is started: its
        "active" event is out, so it runs (within the grace period) like the others.
        """
        free = self._free_slots()
        while free > 0 and self._buffer and not self._releasing:
            self._start(self._buffer.popleft())
            free -= 1
        if self._stopping:
            self._release_buffered()

    def _release_buffered(self) -> None:
        """Hand back leased jobs that never started (the worker is stopping)."""
        while self._buffer:
            running = self._buffer.popleft()
            self._finish(running, Update("r", running.job.id, running.job.token))

    def _account(self, queue: _Queue, update: Update, ok: bool) -> None:
        stats = self.stats
        if not ok:
            stats.refused += 1
            running = self._running.get(update.id)
            if running is not None and running.job.token == update.token:
                running.job.lease_lost = True
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

    def _start(self, running: _Running) -> None:
        leased, job = running.leased, running.job
        assert leased is not None
        running.leased = None
        running.started = asyncio.get_running_loop().time()
        try:
            task, args, kwargs = self._decode(leased)
        except (PayloadError, UnknownTaskError) as exc:
            self._finish(running, Update("f", job.id, job.token, error_json(exc, tb=False), -1))
            return
        running.task = asyncio.create_task(self._execute(running, task, args, kwargs))

    def _never_started(self, running: _Running, task: asyncio.Task[None]) -> None:
        # _execute itself never ends cancelled; a run both handed back and cancelled is reported once.
        if task.cancelled() and self._running.get(running.job.id) is running:
            kind = "x" if running.cancelling else "r"
            self._finish(running, Update(kind, running.job.id, running.job.token))

    def _decode(self, leased: Leased) -> tuple[Task[Any, Any], list[Any], dict[str, Any]]:
        name, args, kwargs = decode_payload(leased.payload, leased.id)
        task = self.registry.get(name)
        if task is None:
            known = ", ".join(t.name for t in self.registry) or "none"
            raise UnknownTaskError(f"no task named {name!r} is registered in this worker (known: {known})")
        return task, args, kwargs

    async def _execute(self, running: _Running, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        job = running.job
        update: Update | None = None
        try:
            call = self.runners[task.runner].run(task, job, [job, *args] if task.takes_job else args, kwargs)
            if task.timeout is None:
                result = await call
            else:
                deadline = asyncio.timeout(task.timeout)
                try:
                    async with deadline:
                        result = await call
                except TimeoutError:
                    if deadline.expired():
                        raise JobTimeoutError(f"timeout: the task ran longer than {task.timeout}s") from None
                    raise
            update = Update("c", job.id, job.token, result_json(result))
        except asyncio.CancelledError as exc:
            # The worker cancels a job to stop it on request or to hand it back; a task that raises
            # CancelledError itself fails.
            if running.cancelling:
                update = Update("x", job.id, job.token)
            elif self._releasing:
                update = Update("r", job.id, job.token)
            else:
                update = self._failure(task, job, exc, task.backoff.delay(job.attempt))
        except Cancelled:
            update = Update("x", job.id, job.token)
        except SlowDown as exc:
            update = Update("d", job.id, job.token, error_json(exc, tb=False), int(exc.delay * 1000))
        except Unrecoverable as exc:
            update = Update("f", job.id, job.token, error_json(exc), -1)
        except Retry as exc:
            delay = task.backoff.delay(job.attempt) if exc.delay is None else exc.delay
            update = self._failure(task, job, exc, delay)
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a task body fails that job only
            update = self._failure(task, job, exc, task.backoff.delay(job.attempt))
        finally:
            if update is None:  # reporting the outcome itself failed: never leave the job active
                update = Update("f", job.id, job.token, error_json(RuntimeError("the outcome could not be recorded")))
            self._finish(running, update)

    def _failure(self, task: Task[Any, Any], job: Job, exc: BaseException, delay: float) -> Update:
        # The script makes the same decision; a final failure says so with delay -1 (counted apart in stats).
        # A delay asked for (Retry) is at most MAX_DELAY_SECONDS already; a backoff is capped to it here.
        delay = min(max(delay, 0.0), MAX_DELAY_SECONDS) if math.isfinite(delay) else MAX_DELAY_SECONDS
        delay_ms = int(delay * 1000) if job.attempt <= task.retries else -1
        return Update("f", job.id, job.token, error_json(exc), delay_ms, task.retries + 1)

    def _finish(self, running: _Running, update: Update) -> None:
        if self._running.get(running.job.id) is running:  # not a newer run of the same job
            del self._running[running.job.id]
        if running.started:
            took = asyncio.get_running_loop().time() - running.started
            self._job_seconds += (took - self._job_seconds) * 0.1
        running.queue.updates.append(update)
        self._wake.set()

    def _report(self, token: int, kind: str, job_id: str, value: str) -> None:
        """Called by ``Job.progress``/``Job.log``, from the loop or a task thread.

        Sent under the token of the run that reported: a stale run (timed out, or its lease
        lost and the job leased again) is dropped here, and refused by the script anyway.
        """
        if threading.get_ident() != self._loop_thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._report, token, kind, job_id, value)
            return
        running = self._running.get(job_id)
        if running is not None and running.job.token == token:
            running.queue.updates.append(Update(kind, job_id, token, value))
            self._wake.set()

    def _hand_back(self) -> None:
        """Grace period over: cancel what still runs; each cancelled job is released, attempt unspent.
        Outcomes Redis still refuses are given up (their jobs run again once their leases expire)."""
        self._releasing = True
        self._wake.set()
        for running in list(self._running.values()):
            if running.task is not None:
                running.task.cancel()
                # A task cancelled before its first step never runs _execute's handlers.
                running.task.add_done_callback(functools.partial(self._never_started, running))

    # -- upkeep ----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # Leases are renewed by the LeaseKeeper's thread, which a task hogging this loop cannot starve.
        while True:
            await asyncio.sleep(self.settings.renew_interval)
            try:
                await self._retrying(self._register)
            except RedisError as exc:  # e.g. BUSY, READONLY, OOM: try again next beat
                self._heartbeat.failed(exc)
            else:
                self._heartbeat.ok()
            self._release_held_back()

    def _release_held_back(self) -> None:
        """Hand back jobs leased ahead that long jobs kept from starting, and stop leasing ahead for now."""
        now = asyncio.get_running_loop().time()
        held = [r for r in self._buffer if now - r.buffered > PREFETCH_HOLD]
        if held:
            self._job_seconds = max(self._job_seconds, PREFETCH_BELOW)
            for running in held:
                self._buffer.remove(running)
                self._finish(running, Update("r", running.job.id, running.job.token))

    def _held(self) -> list[Held]:
        """The leases this worker holds: running jobs, and finished ones whose outcome waits to be sent
        (Redis refused it for now). Called on the LeaseKeeper's thread, so it copies first."""
        while True:
            try:
                held = [(r.queue.keys.queue, r.job.id, r.job.token) for r in list(self._running.values())]
            except RuntimeError:  # the loop changed the dict while it was being copied
                continue
            for queue in self._queues:
                held += [(queue.keys.queue, u.id, u.token) for u in list(queue.updates) if u.kind not in "pl"]
            return held

    def _lease_lost(self, job_id: str, token: int) -> None:
        """Called on the LeaseKeeper's thread: this run's lease is another holder's now."""
        running = self._running.get(job_id)
        if running is not None and running.job.token == token and not running.job.lease_lost:
            running.job.lease_lost = True
            log.warning("job %s: lease lost to another holder; its result will be refused", job_id)

    def _cancel_requested(self, queue: str, job_id: str, token: int) -> None:
        """Called on the LeaseKeeper's thread: the job's cancellation was requested; stop it on the loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs any more
            self._loop.call_soon_threadsafe(self._cancel_token, queue, job_id, token)

    def _cancel_token(self, queue: str, job_id: str, token: int) -> None:
        running = self._running.get(job_id)
        if running is not None and running.job.token == token and running.job.queue == queue:
            self._cancel_run(running)

    def _cancel_run(self, running: _Running) -> None:
        """The job's cancellation was requested: flag it, and stop its run (async tasks are cancelled;
        a sync body is abandoned on its thread and its outcome dropped)."""
        if running.cancelling:
            return
        running.cancelling = True
        running.job.cancelled = True
        log.info("job %s: cancellation requested; stopping it", running.job.id)
        if running.leased is not None:  # leased ahead, not started
            self._buffer.remove(running)
            self._finish(running, Update("x", running.job.id, running.job.token))
        elif running.task is not None:
            running.task.cancel()
            running.task.add_done_callback(functools.partial(self._never_started, running))

    async def _publish_limits(self) -> None:
        """Store the limits tasks declare (``@task(rate_limit=..., max_active=...)``) on every queue served."""
        assert self._store is not None
        for task in self.registry:
            if task.limit is None:
                continue
            for queue in self._queues:
                await self._store.set_limit(queue.keys.queue, task.name, task.limit.to_json())

    async def _register(self) -> None:
        """The heartbeat: this worker is live for three renew intervals (by the Redis clock)."""
        assert self._store is not None
        await self._store.register_worker(self.id, self.settings.queues, self.settings.renew_interval * 3000)

    async def _unregister(self) -> None:
        assert self._store is not None
        with contextlib.suppress(*UNREACHABLE_ERRORS):
            await self._store.unregister_worker(self.id)

    async def _sweep_loop(self) -> None:
        assert self._store is not None
        store = self._store
        while True:
            await asyncio.sleep(self.settings.sweep_interval * random.uniform(0.8, 1.2))
            for queue in self._queues:
                try:
                    recovered, lost = await self._retrying(lambda q=queue: store.sweep(q.keys.queue))  # type: ignore[misc]
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
                    self._wake.set()

    async def _listen(self, queues: list[str], timeout: float) -> Wakeup | None:
        """Wait for a wake-up. Returns the token popped, or None (timed out, or taken by the queued lease).

        With one queue and a free slot, a one-job ``step`` is queued behind the wait on the same
        connection (``WorkerStore.wait_and_lease``): an idle worker's next job then costs no extra
        round trip, and :meth:`stop` ends the wait with ``CLIENT UNBLOCK`` so nothing is leased.
        Not on a cluster, whose client cannot pin a wait and a step to one connection: there it is a
        plain wait per queue (``WorkerStore.wait_for_wakeup``).
        """
        assert self._store is not None
        store = self._store
        if self.burst or len(self._queues) != 1 or self._room() <= 0 or store.on_cluster:
            return await store.wait_for_wakeup(queues, timeout)
        queue = self._queues[0]
        self._listening = True
        try:
            stepped = await store.wait_and_lease(queue.keys.queue, self.id, timeout)
        finally:
            self._listening = False
            self._wake.set()
        if stepped is not None:  # None: the step did not run (its script was missing, and is loaded now)
            self._apply_step(queue, 1, [], stepped)
        return None

    async def _waker_loop(self) -> None:
        """Block on the queues' wake-up lists while the dispatcher is idle, instead of polling."""
        assert self._store is not None
        store = self._store
        queues = [q.keys.queue for q in self._queues]
        while not self._closing:
            await self._need_wakeup.wait()
            self._need_wakeup.clear()
            if self._closing:
                return
            dues = [q.next_due for q in self._queues if q.next_due is not None]
            timeout = min([self.settings.idle_timeout, *dues])
            popped = None
            try:
                popped = await self._listen(queues, max(timeout, 0.001))
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                await asyncio.sleep(self._listener.failed(exc, logging.WARNING))
            else:
                self._listener.ok()
            if popped and (self._stopping or self._room() <= 0):
                # This worker cannot take a job now (stopping, or filled up while it waited):
                # pass the wake-up on to another idle worker.
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    await store.pass_on(popped)
            if self._stopping:
                return
            # Wait again only when the dispatcher, having looked, is idle again: a request made
            # while this wait was on is stale (it knew nothing of what the wake-up announced).
            self._need_wakeup.clear()
            for queue in self._queues:
                queue.ready = True
            self._wake.set()
