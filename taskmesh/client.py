"""The producer side: enqueue jobs, read their status, wait for results, follow events.

Every call has an asyncio twin (``aenqueue``, ``astatus``, ...), so an async
web handler never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .default import CHILD_MARKER, default_client, set_default_client, use_factory
from .errors import JobNotFound
from .events import FINAL_EVENTS, Event, MalformedEvent
from .job import Call, JobHandle, JobState, JobStatus, encode_payload
from .limits import Limit, QueueSettings
from .schedule import (
    Schedule,
    ScheduleEntry,
    ScheduleInfo,
    key_of,
    queue_of,
    read_entries,
    revised,
    schedule_info,
    store_calls,
)
from .settings import Settings
from .store import AsyncQueueStore, EventEntry, QueueStore, connect
from .store.base import JOB_VALUES, AsyncRedis, JobValues, SyncRedis
from .store.keys import QueueKeys, check_name, check_new_job_id
from .task import Task, check_delay, check_priority, check_run_at
from .urls import redact

log = logging.getLogger("taskmesh.client")
STATES = tuple(state.value for state in JobState)
_NAME_CACHE_SIZE = 1000
# Blocking reads stay well under the connection socket timeout (redis-py defaults to 5 s).
_BLOCK_MS = 1000
# A waiter re-reads the job's status at least this often, in case its final event was trimmed unseen.
_RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class _Batch:
    """Jobs bound for one queue: their positions among the calls and their script values, six per job."""

    indexes: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


class Client:
    """Connection to one taskmesh installation (a Redis URL and a key prefix).

    Every Redis call goes through :attr:`store` (sync) or :attr:`astore` (asyncio, one per event loop);
    the client checks and encodes what it is given, and turns what the store answers into jobs and events.
    """

    def __init__(self, url: str | None = None, *, prefix: str | None = None, settings: Settings | None = None) -> None:
        base = settings or Settings.load()
        self.settings = base.replace(**{k: v for k, v in {"redis_url": url, "prefix": prefix}.items() if v is not None})
        self._known_queues: set[str] = set()  # registered already, shared by the sync and the async stores
        #: The sync store: every Redis call of the sync methods goes through it.
        self.store = QueueStore(self.settings, known=self._known_queues)
        self._astore: AsyncQueueStore | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._task_names: set[str] = set()  # task names already validated
        self._skipped = 0  # malformed stream entries events() and aevents() left out

    def __repr__(self) -> str:
        return f"<Client {redact(self.settings.redis_url)} prefix={self.settings.prefix}>"

    # -- connections -------------------------------------------------------

    @property
    def astore(self) -> AsyncQueueStore:
        """The async store of the running event loop (made anew for a new loop)."""
        loop = asyncio.get_running_loop()
        if self._astore is None or self._aloop is not loop:
            self._astore = AsyncQueueStore(self.settings, known=self._known_queues)
            self._aloop = loop
        return self._astore

    @property
    def redis(self) -> SyncRedis:
        """The sync store's redis-py client, for tests and advanced use (taskmesh itself calls the store)."""
        return self.store.redis

    @property
    def direct(self) -> connect.Direct | SyncRedis:
        """Where the sync store's script calls go: :class:`~taskmesh.store.connect.Direct` connections (on a
        cluster, the client)."""
        return self.store.direct

    @property
    def aredis(self) -> AsyncRedis:
        """The async store's redis-py client, for the running event loop."""
        return self.astore.redis

    @property
    def adirect(self) -> connect.AsyncDirect | AsyncRedis:
        """The asyncio twin of :attr:`direct`, for the running event loop."""
        return self.astore.direct

    def keys(self, queue: str) -> QueueKeys:
        return self.store.keys(queue)

    def close(self) -> None:
        self.store.close()

    async def aclose(self) -> None:
        if self._astore is not None:
            await self._astore.aclose()
            self._astore = None

    # -- enqueue -------------------------------------------------------------

    def enqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Queue ``task`` (a Task or a task name) with JSON arguments; returns the handle at once."""
        if isinstance(task, Task):
            return self._submit(task.queue, self._job(task.name, args, kwargs, task.priority))
        return self._submit("default", self._job(task, args, kwargs, 0))

    async def aenqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        if isinstance(task, Task):
            return await self._asubmit(task.queue, self._job(task.name, args, kwargs, task.priority))
        return await self._asubmit("default", self._job(task, args, kwargs, 0))

    def submit(self, call: Call) -> JobHandle[Any]:
        """Queue one described job (options included). An existing job id returns that job, ``created=False``."""
        return self._submit(call.queue, self._call_job(call))

    async def asubmit(self, call: Call) -> JobHandle[Any]:
        return await self._asubmit(call.queue, self._call_job(call))

    @connect.guard
    def _submit(self, queue: str, job: JobValues) -> JobHandle[Any]:
        return JobHandle(self, job[0], queue, self.store.enqueue(queue, job))

    @connect.aguard
    async def _asubmit(self, queue: str, job: JobValues) -> JobHandle[Any]:
        return JobHandle(self, job[0], queue, await self.astore.enqueue(queue, job))

    @connect.guard
    def enqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        """Queue many jobs in one round trip (one script call per queue). Nothing is written if one is invalid."""
        batches = self._prepare(calls)
        return self._handles(batches, self.store.enqueue_many({q: b.values for q, b in batches.items()}))

    @connect.aguard
    async def aenqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        batches = self._prepare(calls)
        return self._handles(batches, await self.astore.enqueue_many({q: b.values for q, b in batches.items()}))

    def _prepare(self, calls: Iterable[Call]) -> dict[str, _Batch]:
        """Validate and encode every call, grouped by queue; raises before anything is written."""
        batches: dict[str, _Batch] = {}
        for index, call in enumerate(calls):
            batch = batches.get(call.queue)
            if batch is None:
                self.keys(call.queue)
                batch = batches[call.queue] = _Batch()
            batch.indexes.append(index)
            batch.values += self._call_job(call)
        return batches

    def _call_job(self, call: Call) -> JobValues:
        return self._job(call.task, call.args, call.kwargs, call.priority, call.job_id, call.delay, call.run_at)

    def _job(
        self,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        priority: int,
        job_id: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
    ) -> JobValues:
        """Validate and encode one job into its enqueue-script values; raises before anything is written."""
        if task not in self._task_names:
            check_name("task name", task)
            if len(self._task_names) < _NAME_CACHE_SIZE:
                self._task_names.add(task)
        job_id = os.urandom(16).hex() if job_id is None else check_new_job_id(job_id)
        delay_ms = run_at_ms = 0
        if delay is not None and run_at is not None:
            raise ValueError(f"{task}: give delay or run_at, not both")
        if delay is not None:
            check_delay(delay)
            delay_ms = max(0, int(delay * 1000))
        run_at = check_run_at(run_at)
        if run_at is not None and run_at.timestamp() > time.time():
            run_at_ms = int(run_at.timestamp() * 1000)
        payload = encode_payload(task, args, kwargs, self.settings.max_payload_bytes)
        return job_id, task, payload, check_priority(priority), delay_ms, run_at_ms

    def _handles(self, batches: dict[str, _Batch], results: list[list[tuple[bool, str]]]) -> list[JobHandle[Any]]:
        """Handles in call order, from each queue's (created, state) per job."""
        found: dict[int, JobHandle[Any]] = {}
        for (queue, batch), result in zip(batches.items(), results, strict=True):
            ids = batch.values[::JOB_VALUES]
            for index, job_id, (created, _) in zip(batch.indexes, ids, result, strict=True):
                found[index] = JobHandle(self, job_id, queue, created)
        return [found[index] for index in range(len(found))]

    # -- reading -------------------------------------------------------------

    @connect.guard
    def status(self, job_id: str, queue: str = "default") -> JobStatus | None:
        raw = self.store.job_record(queue, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    @connect.aguard
    async def astatus(self, job_id: str, queue: str = "default") -> JobStatus | None:
        raw = await self.astore.job_record(queue, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    @connect.guard
    def job(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        """A handle on an existing job, or None."""
        exists = self.store.has_job(queue, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    @connect.aguard
    async def ajob(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        exists = await self.astore.has_job(queue, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    @connect.guard
    def counts(self, queue: str = "default") -> dict[str, int]:
        """Number of jobs per state in ``queue``."""
        return self.store.counts(queue)

    @connect.aguard
    async def acounts(self, queue: str = "default") -> dict[str, int]:
        return await self.astore.counts(queue)

    # -- control ---------------------------------------------------------------

    @connect.guard
    def cancel(self, job_id: str, queue: str = "default") -> str:
        """Cancel a job. Returns ``"cancelled"`` (it was waiting or delayed: done at once),
        ``"cancelling"`` (it is running: its worker stops it within ``renew_interval`` and it ends
        cancelled) or the final state it had already reached. Raises :class:`JobNotFound`."""
        return _cancelled(job_id, queue, self.store.cancel(queue, job_id))

    @connect.aguard
    async def acancel(self, job_id: str, queue: str = "default") -> str:
        return _cancelled(job_id, queue, await self.astore.cancel(queue, job_id))

    @connect.guard
    def pause(self, queue: str = "default") -> None:
        """Workers stop leasing from ``queue`` (running jobs go on; enqueue still works)."""
        self.store.pause(queue)

    @connect.aguard
    async def apause(self, queue: str = "default") -> None:
        await self.astore.pause(queue)

    @connect.guard
    def resume(self, queue: str = "default") -> None:
        """Undo :meth:`pause`; idle workers are woken at once."""
        self.store.resume(queue)

    @connect.aguard
    async def aresume(self, queue: str = "default") -> None:
        await self.astore.resume(queue)

    @connect.guard
    def set_limit(self, queue: str, limit: Limit | None, *, task: str | None = None) -> None:
        """Set (None: remove) the limit of ``queue``, or of ``task``'s jobs in it, for every worker.

        A task's ``@task(rate_limit=..., max_active=...)`` is set this way by each worker that starts.
        """
        name, value = self._limit_args(limit, task)  # checked before anything is written
        self.store.set_limit(queue, name, value)

    @connect.aguard
    async def aset_limit(self, queue: str, limit: Limit | None, *, task: str | None = None) -> None:
        name, value = self._limit_args(limit, task)
        await self.astore.set_limit(queue, name, value)

    def _limit_args(self, limit: Limit | None, task: str | None) -> tuple[str | bytes, str]:
        if limit is not None and not isinstance(limit, Limit):
            raise TypeError(f"limit must be a taskmesh.Limit (e.g. Limit.parse('100/m')) or None, not {limit!r}")
        name: str | bytes
        if task is None:
            name = ""
        elif limit is None and isinstance(task, str) and task:
            # Removal takes any stored name, a garbage one too (QueueSettings.invalid): its bytes, which
            # surrogates stand for in a name that is not UTF-8.
            name = task.encode("utf-8", "surrogateescape")
        else:
            name = check_name("task name", task)
        return name, "" if limit is None else limit.to_json()

    @connect.guard
    def queue_settings(self, queue: str = "default") -> QueueSettings:
        """Whether ``queue`` is paused, and its limits; stored limits that cannot be read are in ``invalid``."""
        return self.store.queue_settings(queue)

    @connect.aguard
    async def aqueue_settings(self, queue: str = "default") -> QueueSettings:
        return await self.astore.queue_settings(queue)

    @connect.guard
    def queues(self) -> list[str]:
        """Queue names used under this prefix (by producers or workers)."""
        return self.store.queues()

    @connect.guard
    def workers(self) -> list[str]:
        """Ids of workers whose heartbeat is current."""
        return self.store.workers()

    # -- schedules -----------------------------------------------------------------

    @connect.guard
    def schedule(
        self,
        /,
        name: str,
        task: Task[Any, Any] | str,
        schedule: Schedule | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        **when: Any,
    ) -> ScheduleEntry:
        """Add or change (by ``name``) a schedule for every scheduler: ``schedule=Schedule(...)`` or its
        fields as keywords (``cron="0 0 * * *"``, ``every=timedelta(minutes=5)``, ``tz=``, ``args=``...).

        Its arguments are checked as :meth:`enqueue` checks a job's (``max_payload_bytes`` among them).
        A call that fails part way (Redis unreachable) may be repeated: no tick of the old schedule fires
        under the new one, whichever part took effect."""
        entry = _entry(name, task, schedule, queue, priority, when, self.settings.max_payload_bytes)
        stored = self.store.stored_schedule(name)
        entry = revised(entry, stored)
        self.store.register_queue(entry.queue)
        before, after = store_calls(entry, stored)
        for queue_name, args in before:
            self.store.cron(queue_name, *args)
        self.store.store_schedule(name, entry.to_json())
        for queue_name, args in after:
            self.store.cron(queue_name, *args)
        return entry

    @connect.aguard
    async def aschedule(
        self,
        /,
        name: str,
        task: Task[Any, Any] | str,
        schedule: Schedule | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        **when: Any,
    ) -> ScheduleEntry:
        entry = _entry(name, task, schedule, queue, priority, when, self.settings.max_payload_bytes)
        store = self.astore
        stored = await store.stored_schedule(name)
        entry = revised(entry, stored)
        await store.register_queue(entry.queue)
        before, after = store_calls(entry, stored)
        for queue_name, args in before:
            await store.cron(queue_name, *args)
        await store.store_schedule(name, entry.to_json())
        for queue_name, args in after:
            await store.cron(queue_name, *args)
        return entry

    @connect.guard
    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its state and next tick. One whose entry cannot be read is left
        out and logged (a warning): :meth:`remove_schedule` removes it. One the schedulers skip (its state
        cannot be read, its arguments are over ``max_payload_bytes``) says why in ``skipped``."""
        entries = _readable(self.store.stored_schedules())
        looks = self.store.look_schedules(entries)
        return [schedule_info(self.settings, e, look) for e, look in zip(entries, looks, strict=True)]

    @connect.aguard
    async def aschedules(self) -> list[ScheduleInfo]:
        store = self.astore
        entries = _readable(await store.stored_schedules())
        looks = await store.look_schedules(entries)
        return [schedule_info(self.settings, e, look) for e, look in zip(entries, looks, strict=True)]

    @connect.guard
    def remove_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs already enqueued stay). False if there was none. An entry that
        cannot be read (written by hand, say, even under a name or queue taskmesh would refuse) is removed
        too."""
        return self._schedule_op(name, "remove")

    @connect.aguard
    async def aremove_schedule(self, name: str) -> bool:
        return await self._aschedule_op(name, "remove")

    @connect.guard
    def pause_schedule(self, name: str) -> bool:
        """Stop firing a schedule; its ticks pass unfired until :meth:`resume_schedule`."""
        return self._schedule_op(name, "pause")

    @connect.aguard
    async def apause_schedule(self, name: str) -> bool:
        return await self._aschedule_op(name, "pause")

    @connect.guard
    def resume_schedule(self, name: str) -> bool:
        return self._schedule_op(name, "resume")

    @connect.aguard
    async def aresume_schedule(self, name: str) -> bool:
        return await self._aschedule_op(name, "resume")

    def _schedule_op(self, name: str, op: str) -> bool:
        field_ = _field(name, op)
        raw = self.store.stored_schedule_bytes(field_)
        if raw is None:
            return False
        queue = _queue_for(name, raw, op)
        if queue is not None:
            self.store.cron(queue, op, name)
        if op == "remove":
            self.store.delete_schedule(field_)
        return True

    async def _aschedule_op(self, name: str, op: str) -> bool:
        field_, store = _field(name, op), self.astore
        raw = await store.stored_schedule_bytes(field_)
        if raw is None:
            return False
        queue = _queue_for(name, raw, op)
        if queue is not None:
            await store.cron(queue, op, name)
        if op == "remove":
            await store.delete_schedule(field_)
        return True

    # -- waiting and events ----------------------------------------------------

    @connect.guard
    def wait(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Block until the job is finished (None on timeout).

        Follows the event stream, and re-reads the status at least once a second: the job's final event may
        have been trimmed from the stream (``events_maxlen``) before this reader saw it.
        """
        deadline = _deadline(timeout)
        cursor = self.store.last_event_ids([queue])[queue]
        while True:
            status = self.status(job_id, queue)
            if status is None or status.state.finished:
                return status
            read_at = time.monotonic()
            while True:
                block = _block_ms(deadline)
                if block is None:
                    return None
                entries = self.store.read_events({queue: cursor}, count=1000, block=block)
                cursor = entries[-1].id if entries else cursor
                if _recheck(job_id, entries, read_at):
                    break

    @connect.aguard
    async def await_(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Async twin of :meth:`wait`."""
        deadline = _deadline(timeout)
        cursor = (await self.astore.last_event_ids([queue]))[queue]
        while True:
            status = await self.astatus(job_id, queue)
            if status is None or status.state.finished:
                return status
            read_at = time.monotonic()
            while True:
                block = _block_ms(deadline)
                if block is None:
                    return None
                entries = await self.astore.read_events({queue: cursor}, count=1000, block=block)
                cursor = entries[-1].id if entries else cursor
                if _recheck(job_id, entries, read_at):
                    break

    @connect.guard
    def events(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> Iterator[Event]:
        """Follow events live. ``since``: ``"$"`` (from now), ``"0"`` (from the start) or an event id.

        ``"$"`` is resolved by this call, so an event appended after it returns is never missed.
        Ends after ``timeout`` seconds without a new event (None: never; 0: return what is there).
        """
        queues = (queues,) if isinstance(queues, str) else queues
        cursors = {self.keys(q).queue: since for q in queues}
        if since == "$":
            cursors = self.store.last_event_ids(list(cursors))
        return self._follow(cursors, timeout)

    @connect.guard_iter
    def _follow(self, cursors: dict[str, str], timeout: float | None) -> Iterator[Event]:
        deadline = _deadline(timeout)
        while True:
            block = _block_ms(deadline)  # None once the deadline passed: one last look without blocking
            entries = self.store.read_events(cursors, count=500, block=block)
            if entries:
                deadline = _deadline(timeout)
            elif block is None:
                return
            for queue, entry_id, fields in entries:
                cursors[queue] = entry_id
                event = self._event(queue, entry_id, fields)
                if event is not None:
                    yield event

    @connect.aguard_iter
    async def aevents(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """Async twin of :meth:`events`; here ``"$"`` is resolved when iteration starts."""
        queues = (queues,) if isinstance(queues, str) else queues
        cursors = {self.keys(q).queue: since for q in queues}
        store = self.astore
        if since == "$":
            cursors = await store.last_event_ids(list(cursors))
        deadline = _deadline(timeout)
        while True:
            block = _block_ms(deadline)
            entries = await store.read_events(cursors, count=500, block=block)
            if entries:
                deadline = _deadline(timeout)
            elif block is None:
                return
            for queue, entry_id, fields in entries:
                cursors[queue] = entry_id
                event = self._event(queue, entry_id, fields)
                if event is not None:
                    yield event

    def _event(self, queue: str, entry_id: str, fields: object) -> Event | None:
        """The event in a stream entry, or None for an entry taskmesh could not have written (logged)."""
        try:
            return Event.parse(queue, entry_id, fields)
        except MalformedEvent as exc:
            self._skipped += 1
            level = logging.WARNING if self._skipped == 1 or self._skipped % 1000 == 0 else logging.DEBUG
            log.log(level, "queue %s: skipped stream entry %s (%s); %d skipped", queue, entry_id, exc, self._skipped)
            return None


def _entry(
    name: str,
    task: Task[Any, Any] | str,
    schedule: Schedule | None,
    queue: str | None,
    priority: int | None,
    when: Mapping[str, Any],
    limit: int,
) -> ScheduleEntry:
    """The entry to store; its scheduled run's arguments pass the checks an enqueued job's pass."""
    if schedule is not None and when:
        raise TypeError("give a Schedule or its fields as keywords, not both")
    schedule = schedule or Schedule(**when)
    if isinstance(task, Task):
        queue, priority, task = queue or task.queue, task.priority if priority is None else priority, task.name
    entry = ScheduleEntry(name, task, queue or "default", schedule, check_priority(priority or 0))
    schedule.payload(entry.task, limit)
    return entry


def _readable(stored: Mapping[str, str | None]) -> list[ScheduleEntry]:
    """Stored entries in name order; one that cannot be read is logged and left out."""
    entries, unreadable = read_entries(stored)
    for name, why in unreadable.items():
        log.warning("schedule %r cannot be read (%s): remove it with `taskmesh schedules remove NAME`", name, why)
    return entries


def _field(name: str, op: str) -> bytes:
    """The hash field of schedule ``name``: any name for a removal (an entry written by hand may have
    one taskmesh refuses), a valid one otherwise."""
    if op != "remove":
        check_name("schedule name", name)
    elif not isinstance(name, str):
        raise TypeError(f"a schedule name is a string, not {type(name).__name__}")
    return key_of(name)


def _queue_for(name: str, raw: bytes, op: str) -> str | None:
    """The queue holding a schedule's state (None: it can have none); an unreadable entry can still be
    removed (not paused)."""
    queue = queue_of(raw.decode("utf-8", "replace"))
    if queue is None and op != "remove":
        raise ValueError(f"schedule {name}: its stored entry cannot be read; remove it and add it again")
    try:
        check_name("schedule name", name)
    except ValueError:
        return None  # no scheduler keeps a state for an entry with an invalid name
    return queue


def _cancelled(job_id: str, queue: str, state: str) -> str:
    if state == "missing":
        raise JobNotFound(f"job {job_id} not found in queue {queue!r}")
    return state


def _recheck(job_id: str, entries: list[EventEntry], read_at: float) -> bool:
    """Read the status again: a final event for the job arrived, nothing arrived, or a second passed."""
    if not entries or time.monotonic() - read_at >= _RECHECK_SECONDS:
        return True
    return any(f.get("job") == job_id and f.get("event") in FINAL_EVENTS for _, _, f in entries)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _block_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return _BLOCK_MS
    left = deadline - time.monotonic()
    return None if left <= 0 else max(1, min(_BLOCK_MS, int(left * 1000)))


use_factory(Client)  # Task.enqueue's default client (see taskmesh.default)

__all__ = ["CHILD_MARKER", "Client", "default_client", "set_default_client"]
