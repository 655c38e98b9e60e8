"""What :class:`~taskmesh.client.Client`'s sync and async methods share: everything that is not I/O.

Checking and encoding jobs, grouping a batch by queue, turning the store's answers into handles and
events, the schedule and wait helpers. Nothing here sends a command, so nothing here has a twin; the
methods that do I/O live in :mod:`taskmesh.client` (see its docstring for how the twins are kept alike).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from .errors import JobFailed, JobNotFound, JobTimeout
from .events import FINAL_EVENTS, Event, MalformedEvent
from .job import Call, JobHandle, JobState, JobStatus, encode_payload
from .limits import Limit
from .names import check_name, check_new_job_id
from .schedule import Schedule, ScheduleEntry, key_of, queue_of, read_entries
from .settings import Settings
from .store import EventEntry, QueueStore
from .store.base import JOB_VALUES, JobValues
from .task import Task, check_delay, check_priority, check_run_at

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("taskmesh.client")
_NAME_CACHE_SIZE = 1000
# Blocking reads stay well under the connection socket timeout (redis-py defaults to 5 s).
_BLOCK_MS = 1000
# A waiter re-reads the job's status at least this often, in case its final event was trimmed unseen.
_RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class Batch:
    """Jobs bound for one queue: their positions among the calls and their script values, six per job."""

    indexes: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


class ClientBase:
    """The client's state and its checks, encodings and readings (set up by ``Client.__init__``)."""

    settings: Settings
    #: The sync store: every Redis call of the sync methods goes through it.
    store: QueueStore
    _task_names: set[str]  # task names already validated
    _skipped: int  # malformed stream entries events() and aevents() left out

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

    def _prepare(self, calls: Iterable[Call]) -> dict[str, Batch]:
        """Validate and encode every call, grouped by queue; raises before anything is written."""
        batches: dict[str, Batch] = {}
        for index, call in enumerate(calls):
            batch = batches.get(call.queue)
            if batch is None:
                self.store.keys(call.queue)
                batch = batches[call.queue] = Batch()
            batch.indexes.append(index)
            batch.values += self._call_job(call)
        return batches

    def _handles(self, batches: dict[str, Batch], results: list[list[tuple[bool, str]]]) -> list[JobHandle[Any]]:
        """Handles in call order, from each queue's (created, state) per job."""
        client = cast("Client", self)
        found: dict[int, JobHandle[Any]] = {}
        for (queue, batch), result in zip(batches.items(), results, strict=True):
            ids = batch.values[::JOB_VALUES]
            for index, job_id, (created, _) in zip(batch.indexes, ids, result, strict=True):
                found[index] = JobHandle(client, job_id, queue, created)
        return [found[index] for index in range(len(found))]

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

    def _cursors(self, queues: Sequence[str], since: str) -> dict[str, str]:
        """Each queue's stream, read from ``since``; a single queue name counts as one queue."""
        queues = (queues,) if isinstance(queues, str) else queues
        return {self.store.keys(q).queue: since for q in queues}

    def _event(self, queue: str, entry_id: str, fields: object) -> Event | None:
        """The event in a stream entry, or None for an entry taskmesh could not have written (logged)."""
        try:
            return Event.parse(queue, entry_id, fields)
        except MalformedEvent as exc:
            self._skipped += 1
            level = logging.WARNING if self._skipped == 1 or self._skipped % 1000 == 0 else logging.DEBUG
            log.log(level, "queue %s: skipped stream entry %s (%s); %d skipped", queue, entry_id, exc, self._skipped)
            return None


def entry(
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


def readable(stored: Mapping[str, str | None]) -> list[ScheduleEntry]:
    """Stored entries in name order; one that cannot be read is logged and left out."""
    entries, unreadable = read_entries(stored)
    for name, why in unreadable.items():
        log.warning("schedule %r cannot be read (%s): remove it with `taskmesh schedules remove NAME`", name, why)
    return entries


def schedule_field(name: str, op: str) -> bytes:
    """The hash field of schedule ``name``: any name for a removal (an entry written by hand may have
    one taskmesh refuses), a valid one otherwise."""
    if op != "remove":
        check_name("schedule name", name)
    elif not isinstance(name, str):
        raise TypeError(f"a schedule name is a string, not {type(name).__name__}")
    return key_of(name)


def queue_for(name: str, raw: bytes, op: str) -> str | None:
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


def cancelled(job_id: str, queue: str, state: str) -> str:
    if state == "missing":
        raise JobNotFound(f"job {job_id} not found in queue {queue!r}")
    return state


def recheck(job_id: str, entries: list[EventEntry], read_at: float) -> bool:
    """Read the status again: a final event for the job arrived, nothing arrived, or a second passed."""
    if not entries or time.monotonic() - read_at >= _RECHECK_SECONDS:
        return True
    return any(f.get("job") == job_id and f.get("event") in FINAL_EVENTS for _, _, f in entries)


def deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def block_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return _BLOCK_MS
    left = deadline - time.monotonic()
    return None if left <= 0 else max(1, min(_BLOCK_MS, int(left * 1000)))


def outcome(job_id: str, status: JobStatus | None, timeout: float | None) -> Any:
    """A waited-for job's result; :class:`JobTimeout` if it did not finish, :class:`JobFailed` if it failed
    or was cancelled."""
    if status is None:
        raise JobTimeout(f"job {job_id} did not finish within {timeout}s")
    if status.state is JobState.COMPLETED:
        return status.result
    raise JobFailed(status.id, status.state.value, status.error)
