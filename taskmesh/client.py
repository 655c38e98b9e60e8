"""The producer side: enqueue jobs, read their status, wait for results, follow events.

**Twins.** Every call that talks to Redis has an asyncio twin, named with an ``a`` in front and taking the
same parameters (``enqueue``/``aenqueue``, ``status``/``astatus``, ``wait_job``/``await_job``, ...), so an
async web handler never blocks. The twins are kept alike in two ways:

- Everything that is not I/O (checking and encoding jobs, batching, reading replies into handles and
  events) lives once, in :class:`taskmesh.clientbase.ClientBase`.
- The I/O methods are written once, async. Their sync twins, in the block marked below, are written from
  them by ``tests/unasync.py`` with a fixed list of text replacements (``async def aX`` → ``def X``,
  ``await`` dropped, ``self.astore`` → ``self.store``, ``connect.aguard`` → ``connect.guard``), as
  httpcore writes its sync code from its async code. ``tests/test_client_twins.py`` fails when the block is
  not what the script writes, and when a public sync method of ``Client``, ``JobHandle``, ``Task`` or
  ``TaskCall`` lacks its ``a`` twin with the same signature, or the reverse.

Why generated and not only a shared base: a twin that makes several store calls (``schedule``: read, register,
cron calls in an order that matters, write; ``wait_job``: a loop of reads) would still be written twice over a
shared base, and such pairs are the ones that drifted. Generated, the order of the calls exists once. The
block stays inside ``Client`` (not a mixin of its own), so the class itself defines every method its reference
page lists.

Written by hand, in pairs, outside the block: the connections (``close``/``aclose``: the sync store lives as
long as the client, an async one per event loop) and ``events``/``aevents`` (a sync call resolves
``since="$"`` before it returns; an async generator runs nothing until it is iterated).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from typing_extensions import deprecated

from .clientbase import (
    ClientBase,
    block_ms,
    cancelled,
    deadline,
    entry,
    outcome,
    queue_for,
    readable,
    recheck,
    schedule_field,
)
from .default import CHILD_MARKER, default_client, set_default_client, use_factory
from .errors import JobNotFound
from .events import Event
from .job import Call, JobHandle, JobState, JobStatus
from .limits import Limit, QueueSettings
from .schedule import Schedule, ScheduleEntry, ScheduleInfo, revised, schedule_info, store_calls
from .settings import Settings
from .store import AsyncQueueStore, QueueStore, connect
from .store.base import AsyncRedis, JobValues, SyncRedis
from .store.keys import QueueKeys
from .task import Task
from .urls import redact

STATES = tuple(state.value for state in JobState)


class Client(ClientBase):
    """Connection to one taskmesh installation (a Redis URL and a key prefix).

    Every Redis call goes through :attr:`store` (sync) or :attr:`astore` (asyncio, one per event loop);
    the client checks and encodes what it is given, and turns what the store answers into jobs and events.
    """

    def __init__(self, url: str | None = None, *, prefix: str | None = None, settings: Settings | None = None) -> None:
        base = settings or Settings.load()
        self.settings = base.replace(**{k: v for k, v in {"redis_url": url, "prefix": prefix}.items() if v is not None})
        self._known_queues: set[str] = set()  # registered already, shared by the sync and the async stores
        self.store = QueueStore(self.settings, known=self._known_queues)
        self._astore: AsyncQueueStore | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._task_names = set()
        self._skipped = 0

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
        """The Redis keys of ``queue`` (its name checked); no I/O."""
        return self.store.keys(queue)

    def close(self) -> None:
        """Close the sync store's connections (they are made again at the next call)."""
        self.store.close()

    async def aclose(self) -> None:
        """Close the async store's connections (a new one is made at the next call)."""
        if self._astore is not None:
            await self._astore.aclose()
            self._astore = None

    # -- events ------------------------------------------------------------------

    @connect.guard
    def events(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> Iterator[Event]:
        """Follow events live. ``since``: ``"$"`` (from now), ``"0"`` (from the start) or an event id.

        ``"$"`` is resolved by this call, so an event appended after it returns is never missed.
        Ends after ``timeout`` seconds without a new event (None: never; 0: return what is there).
        """
        cursors = self._cursors(queues, since)
        if since == "$":
            cursors = self.store.last_event_ids(list(cursors))
        return self._follow(cursors, False, timeout)

    def aevents(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """Async twin of :meth:`events`; here ``"$"`` is resolved when iteration starts."""
        return self._afollow(self._cursors(queues, since), since == "$", timeout)

    # -- renamed; the old names still work ------------------------------------------------

    @deprecated("Client.wait is renamed Client.wait_job (its async twin is Client.await_job)")
    def wait(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Deprecated: :meth:`wait_job`."""
        return self.wait_job(job_id, queue, timeout)

    @deprecated("Client.await_ is renamed Client.await_job (the async twin of Client.wait_job)")
    async def await_(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Deprecated: :meth:`await_job`."""
        return await self.await_job(job_id, queue, timeout)

    # -- sync: written by tests/unasync.py from the async methods below; do not edit by hand ---------------

    # enqueue

    def enqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Queue ``task`` (a Task or a task name) with JSON arguments; returns the handle at once."""
        if isinstance(task, Task):
            return self._submit(task.queue, self._job(task.name, args, kwargs, task.priority))
        return self._submit("default", self._job(task, args, kwargs, 0))

    def submit(self, call: Call) -> JobHandle[Any]:
        """Queue one described job (options included). An existing job id returns that job, ``created=False``."""
        return self._submit(call.queue, self._call_job(call))

    @connect.guard
    def _submit(self, queue: str, job: JobValues) -> JobHandle[Any]:
        return JobHandle(self, job[0], queue, self.store.enqueue(queue, job))

    @connect.guard
    def enqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        """Queue many jobs in one round trip (one script call per queue). Nothing is written if one is invalid."""
        batches = self._prepare(calls)
        return self._handles(batches, self.store.enqueue_many({q: b.values for q, b in batches.items()}))

    # reading

    @connect.guard
    def status(self, job_id: str, queue: str = "default") -> JobStatus | None:
        """The job's status, or None if there is no such job."""
        raw = self.store.job_record(queue, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    @connect.guard
    def job(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        """A handle on an existing job, or None."""
        exists = self.store.has_job(queue, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    @connect.guard
    def counts(self, queue: str = "default") -> dict[str, int]:
        """Number of jobs per state in ``queue``."""
        return self.store.counts(queue)

    # control

    @connect.guard
    def cancel(self, job_id: str, queue: str = "default") -> str:
        """Cancel a job. Returns ``"cancelled"`` (it was waiting or delayed: done at once),
        ``"cancelling"`` (it is running: its worker stops it within ``renew_interval`` and it ends
        cancelled) or the final state it had already reached. Raises :class:`JobNotFound`."""
        return cancelled(job_id, queue, self.store.cancel(queue, job_id))

    @connect.guard
    def pause(self, queue: str = "default") -> None:
        """Workers stop leasing from ``queue`` (running jobs go on; enqueue still works)."""
        self.store.pause(queue)

    @connect.guard
    def resume(self, queue: str = "default") -> None:
        """Undo :meth:`pause`; idle workers are woken at once."""
        self.store.resume(queue)

    @connect.guard
    def set_limit(self, queue: str, limit: Limit | None, *, task: str | None = None) -> None:
        """Set (None: remove) the limit of ``queue``, or of ``task``'s jobs in it, for every worker.

        A task's ``@task(rate_limit=..., max_active=...)`` is set this way by each worker that starts.
        """
        name, value = self._limit_args(limit, task)  # checked before anything is written
        self.store.set_limit(queue, name, value)

    @connect.guard
    def queue_settings(self, queue: str = "default") -> QueueSettings:
        """Whether ``queue`` is paused, and its limits; stored limits that cannot be read are in ``invalid``."""
        return self.store.queue_settings(queue)

    @connect.guard
    def queues(self) -> list[str]:
        """Queue names used under this prefix (by producers or workers)."""
        return self.store.queues()

    @connect.guard
    def workers(self) -> list[str]:
        """Ids of workers whose heartbeat is current."""
        return self.store.workers()

    # schedules

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
        new = entry(name, task, schedule, queue, priority, when, self.settings.max_payload_bytes)
        store = self.store
        stored = store.stored_schedule(name)
        new = revised(new, stored)
        store.register_queue(new.queue)
        before, after = store_calls(new, stored)
        for queue_name, args in before:
            store.cron(queue_name, *args)
        store.store_schedule(name, new.to_json())
        for queue_name, args in after:
            store.cron(queue_name, *args)
        return new

    @connect.guard
    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its state and next tick. One whose entry cannot be read is left
        out and logged (a warning): :meth:`remove_schedule` removes it. One the schedulers skip (its state
        cannot be read, its arguments are over ``max_payload_bytes``) says why in ``skipped``."""
        store = self.store
        entries = readable(store.stored_schedules())
        looks = store.look_schedules(entries)
        return [schedule_info(self.settings, e, look) for e, look in zip(entries, looks, strict=True)]

    @connect.guard
    def remove_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs already enqueued stay). False if there was none. An entry that
        cannot be read (written by hand, say, even under a name or queue taskmesh would refuse) is removed
        too."""
        return self._schedule_op(name, "remove")

    @connect.guard
    def pause_schedule(self, name: str) -> bool:
        """Stop firing a schedule; its ticks pass unfired until :meth:`resume_schedule`."""
        return self._schedule_op(name, "pause")

    @connect.guard
    def resume_schedule(self, name: str) -> bool:
        """Fire a paused schedule again, from its next tick."""
        return self._schedule_op(name, "resume")

    def _schedule_op(self, name: str, op: str) -> bool:
        field, store = schedule_field(name, op), self.store
        raw = store.stored_schedule_bytes(field)
        if raw is None:
            return False
        queue = queue_for(name, raw, op)
        if queue is not None:
            store.cron(queue, op, name)
        if op == "remove":
            store.delete_schedule(field)
        return True

    # waiting and events

    @connect.guard
    def wait_job(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Wait until the job is finished and return its status (None on timeout).

        Follows the event stream, and re-reads the status at least once a second: the job's final event may
        have been trimmed from the stream (``events_maxlen``) before this reader saw it.
        """
        until = deadline(timeout)
        cursors = self.store.last_event_ids([queue])
        cursor = cursors[queue]
        while True:
            status = self.status(job_id, queue)
            if status is None or status.state.finished:
                return status
            read_at = time.monotonic()
            while True:
                block = block_ms(until)
                if block is None:
                    return None
                entries = self.store.read_events({queue: cursor}, count=1000, block=block)
                cursor = entries[-1].id if entries else cursor
                if recheck(job_id, entries, read_at):
                    break

    def _result(self, job_id: str, queue: str, timeout: float | None) -> Any:
        """The job's result once it finished, for :class:`JobHandle` (which says what it raises)."""
        status = self.wait_job(job_id, queue, timeout)
        if status is None and self.status(job_id, queue) is None:
            raise JobNotFound(f"job {job_id} not found in queue {queue!r}")
        return outcome(job_id, status, timeout)

    @connect.guard_iter
    def _follow(self, cursors: dict[str, str], resolve: bool, timeout: float | None) -> Iterator[Event]:
        """The events after ``cursors`` (each stream's last id first, if ``resolve``) until ``timeout``
        seconds pass without one."""
        store = self.store
        if resolve:
            cursors = store.last_event_ids(list(cursors))
        until = deadline(timeout)
        while True:
            block = block_ms(until)  # None once the deadline passed: one last look without blocking
            entries = store.read_events(cursors, count=500, block=block)
            if entries:
                until = deadline(timeout)
            elif block is None:
                return
            for queue, entry_id, fields in entries:
                cursors[queue] = entry_id
                event = self._event(queue, entry_id, fields)
                if event is not None:
                    yield event

    # -- async: the source of the sync methods above (edit here, then run tests/unasync.py) ----------------

    # enqueue

    async def aenqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Queue ``task`` (a Task or a task name) with JSON arguments; returns the handle at once."""
        if isinstance(task, Task):
            return await self._asubmit(task.queue, self._job(task.name, args, kwargs, task.priority))
        return await self._asubmit("default", self._job(task, args, kwargs, 0))

    async def asubmit(self, call: Call) -> JobHandle[Any]:
        """Queue one described job (options included). An existing job id returns that job, ``created=False``."""
        return await self._asubmit(call.queue, self._call_job(call))

    @connect.aguard
    async def _asubmit(self, queue: str, job: JobValues) -> JobHandle[Any]:
        return JobHandle(self, job[0], queue, await self.astore.enqueue(queue, job))

    @connect.aguard
    async def aenqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        """Queue many jobs in one round trip (one script call per queue). Nothing is written if one is invalid."""
        batches = self._prepare(calls)
        return self._handles(batches, await self.astore.enqueue_many({q: b.values for q, b in batches.items()}))

    # reading

    @connect.aguard
    async def astatus(self, job_id: str, queue: str = "default") -> JobStatus | None:
        """The job's status, or None if there is no such job."""
        raw = await self.astore.job_record(queue, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    @connect.aguard
    async def ajob(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        """A handle on an existing job, or None."""
        exists = await self.astore.has_job(queue, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    @connect.aguard
    async def acounts(self, queue: str = "default") -> dict[str, int]:
        """Number of jobs per state in ``queue``."""
        return await self.astore.counts(queue)

    # control

    @connect.aguard
    async def acancel(self, job_id: str, queue: str = "default") -> str:
        """Cancel a job. Returns ``"cancelled"`` (it was waiting or delayed: done at once),
        ``"cancelling"`` (it is running: its worker stops it within ``renew_interval`` and it ends
        cancelled) or the final state it had already reached. Raises :class:`JobNotFound`."""
        return cancelled(job_id, queue, await self.astore.cancel(queue, job_id))

    @connect.aguard
    async def apause(self, queue: str = "default") -> None:
        """Workers stop leasing from ``queue`` (running jobs go on; enqueue still works)."""
        await self.astore.pause(queue)

    @connect.aguard
    async def aresume(self, queue: str = "default") -> None:
        """Undo :meth:`apause`; idle workers are woken at once."""
        await self.astore.resume(queue)

    @connect.aguard
    async def aset_limit(self, queue: str, limit: Limit | None, *, task: str | None = None) -> None:
        """Set (None: remove) the limit of ``queue``, or of ``task``'s jobs in it, for every worker.

        A task's ``@task(rate_limit=..., max_active=...)`` is set this way by each worker that starts.
        """
        name, value = self._limit_args(limit, task)  # checked before anything is written
        await self.astore.set_limit(queue, name, value)

    @connect.aguard
    async def aqueue_settings(self, queue: str = "default") -> QueueSettings:
        """Whether ``queue`` is paused, and its limits; stored limits that cannot be read are in ``invalid``."""
        return await self.astore.queue_settings(queue)

    @connect.aguard
    async def aqueues(self) -> list[str]:
        """Queue names used under this prefix (by producers or workers)."""
        return await self.astore.queues()

    @connect.aguard
    async def aworkers(self) -> list[str]:
        """Ids of workers whose heartbeat is current."""
        return await self.astore.workers()

    # schedules

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
        """Add or change (by ``name``) a schedule for every scheduler: ``schedule=Schedule(...)`` or its
        fields as keywords (``cron="0 0 * * *"``, ``every=timedelta(minutes=5)``, ``tz=``, ``args=``...).

        Its arguments are checked as :meth:`aenqueue` checks a job's (``max_payload_bytes`` among them).
        A call that fails part way (Redis unreachable) may be repeated: no tick of the old schedule fires
        under the new one, whichever part took effect."""
        new = entry(name, task, schedule, queue, priority, when, self.settings.max_payload_bytes)
        store = self.astore
        stored = await store.stored_schedule(name)
        new = revised(new, stored)
        await store.register_queue(new.queue)
        before, after = store_calls(new, stored)
        for queue_name, args in before:
            await store.cron(queue_name, *args)
        await store.store_schedule(name, new.to_json())
        for queue_name, args in after:
            await store.cron(queue_name, *args)
        return new

    @connect.aguard
    async def aschedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its state and next tick. One whose entry cannot be read is left
        out and logged (a warning): :meth:`aremove_schedule` removes it. One the schedulers skip (its state
        cannot be read, its arguments are over ``max_payload_bytes``) says why in ``skipped``."""
        store = self.astore
        entries = readable(await store.stored_schedules())
        looks = await store.look_schedules(entries)
        return [schedule_info(self.settings, e, look) for e, look in zip(entries, looks, strict=True)]

    @connect.aguard
    async def aremove_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs already enqueued stay). False if there was none. An entry that
        cannot be read (written by hand, say, even under a name or queue taskmesh would refuse) is removed
        too."""
        return await self._aschedule_op(name, "remove")

    @connect.aguard
    async def apause_schedule(self, name: str) -> bool:
        """Stop firing a schedule; its ticks pass unfired until :meth:`aresume_schedule`."""
        return await self._aschedule_op(name, "pause")

    @connect.aguard
    async def aresume_schedule(self, name: str) -> bool:
        """Fire a paused schedule again, from its next tick."""
        return await self._aschedule_op(name, "resume")

    async def _aschedule_op(self, name: str, op: str) -> bool:
        field, store = schedule_field(name, op), self.astore
        raw = await store.stored_schedule_bytes(field)
        if raw is None:
            return False
        queue = queue_for(name, raw, op)
        if queue is not None:
            await store.cron(queue, op, name)
        if op == "remove":
            await store.delete_schedule(field)
        return True

    # waiting and events

    @connect.aguard
    async def await_job(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Wait until the job is finished and return its status (None on timeout).

        Follows the event stream, and re-reads the status at least once a second: the job's final event may
        have been trimmed from the stream (``events_maxlen``) before this reader saw it.
        """
        until = deadline(timeout)
        cursors = await self.astore.last_event_ids([queue])
        cursor = cursors[queue]
        while True:
            status = await self.astatus(job_id, queue)
            if status is None or status.state.finished:
                return status
            read_at = time.monotonic()
            while True:
                block = block_ms(until)
                if block is None:
                    return None
                entries = await self.astore.read_events({queue: cursor}, count=1000, block=block)
                cursor = entries[-1].id if entries else cursor
                if recheck(job_id, entries, read_at):
                    break

    async def _aresult(self, job_id: str, queue: str, timeout: float | None) -> Any:
        """The job's result once it finished, for :class:`JobHandle` (which says what it raises)."""
        status = await self.await_job(job_id, queue, timeout)
        if status is None and await self.astatus(job_id, queue) is None:
            raise JobNotFound(f"job {job_id} not found in queue {queue!r}")
        return outcome(job_id, status, timeout)

    @connect.aguard_iter
    async def _afollow(self, cursors: dict[str, str], resolve: bool, timeout: float | None) -> AsyncIterator[Event]:
        """The events after ``cursors`` (each stream's last id first, if ``resolve``) until ``timeout``
        seconds pass without one."""
        store = self.astore
        if resolve:
            cursors = await store.last_event_ids(list(cursors))
        until = deadline(timeout)
        while True:
            block = block_ms(until)  # None once the deadline passed: one last look without blocking
            entries = await store.read_events(cursors, count=500, block=block)
            if entries:
                until = deadline(timeout)
            elif block is None:
                return
            for queue, entry_id, fields in entries:
                cursors[queue] = entry_id
                event = self._event(queue, entry_id, fields)
                if event is not None:
                    yield event

    # -- end of the async source ---------------------------------------------------------------------------


use_factory(Client)  # Task.enqueue's default client (see taskmesh.default)

__all__ = ["CHILD_MARKER", "Client", "default_client", "set_default_client"]
