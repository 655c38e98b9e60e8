"""Lifecycle events: every transition appends one entry to the queue's Redis stream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import check_job_id

#: Every event name a script emits.
EVENT_NAMES = (
    "enqueued",  # added, runnable now (a scheduled run: data schedule, tick ms)
    "delayed",  # added with a due time (data: due, epoch ms)
    "waiting",  # a delayed or retrying job became runnable
    "active",  # leased by a worker (data: attempt)
    "progress",  # data: progress (JSON text)
    "log",  # data: message
    "completed",
    "retrying",  # failed, will run again (data: attempt, delay ms)
    "failed",  # data: attempt, and reason for a lost worker
    "stalled",  # lease expired; back to waiting (data: stalls)
    "released",  # handed back by a stopping worker without spending an attempt
    "cancelling",  # cancellation requested while active; the worker stops the run
    "cancelled",
    "deferred",  # the task asked to slow down: delayed again, attempt unspent (data: delay ms)
    "paused",  # queue events (job empty): leasing from the queue stopped
    "resumed",
    "limited",  # a queue (task empty) or task limit changed (data: task, limit JSON, empty: removed)
    "tick_skipped",  # a schedule's tick passed unfired (job empty; data: schedule, tick ms, reason)
)
FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
#: The events of a queue, not of a job: their ``job`` field is empty. Every other event names its job.
QUEUE_EVENTS = frozenset({"paused", "resumed", "limited", "tick_skipped"})
#: The largest entry (names and values, UTF-8 bytes) :meth:`Event.parse` takes. Above anything the engine
#: writes: a progress value of at most ``job.MAX_PROGRESS_BYTES`` (64 KiB), a log line of at most
#: ``job.MAX_LOG_CHARS`` characters (8 kB), a job id, a task name and a few small fields. Fixed, not
#: ``max_payload_bytes``: no setting may make an event the engine wrote look malformed.
MAX_EVENT_BYTES = 128 * 1024
#: Keys of ``Event.to_dict`` a data field would overwrite.
_RESERVED = frozenset({"id", "queue"})


class MalformedEvent(ValueError):
    """A stream entry that is not an event taskmesh could have written (another program wrote it, or
    wrote over it). Raised by :meth:`Event.parse`; the message says what is wrong, never the values."""


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry. ``id`` is the stream id: pass it as ``since`` to resume after it."""

    id: str
    queue: str
    name: str
    job_id: str
    data: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, queue: str, entry_id: str, fields: dict[str, str]) -> Event:
        data = dict(fields)
        name = data.pop("event", "")
        job_id = data.pop("job", "")
        return cls(id=entry_id, queue=queue, name=name, job_id=job_id, data=data)

    @classmethod
    def parse(cls, queue: str, entry_id: str, fields: object) -> Event:
        """``from_entry`` for an entry read from Redis, which anything with access may have written.

        Raises :class:`MalformedEvent` unless ``fields`` maps text to text, valid UTF-8 (a reply decoded
        with ``surrogateescape`` carries invalid bytes as lone surrogates) of at most
        :data:`MAX_EVENT_BYTES` in all, with a known ``event`` name, a ``job`` that is a valid job id
        (empty for the :data:`QUEUE_EVENTS` only), and no data field named ``id`` or ``queue`` (it would
        overwrite the event's own in ``to_dict``).
        """
        if not isinstance(fields, Mapping) or not fields:
            raise MalformedEvent("no fields")
        size = 0
        for key, value in fields.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise MalformedEvent("a field that is not text")
            size += _utf8_size(key) + _utf8_size(value)
            if size > MAX_EVENT_BYTES:
                raise MalformedEvent(f"fields larger than {MAX_EVENT_BYTES} bytes")
        name, job_id = fields.get("event"), fields.get("job")
        if name not in EVENT_NAMES:
            raise MalformedEvent("no event name" if name is None else "an unknown event name")
        if job_id is None:
            raise MalformedEvent("no job field")
        if not job_id and name not in QUEUE_EVENTS:
            raise MalformedEvent("a job event without a job")
        if job_id:
            try:
                check_job_id(job_id)
            except ValueError:
                raise MalformedEvent("an invalid job id") from None
        if not _RESERVED.isdisjoint(fields):
            raise MalformedEvent("a data field named id or queue")
        return cls.from_entry(queue, entry_id, dict(fields))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "queue": self.queue, "event": self.name, "job": self.job_id, **self.data}


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise MalformedEvent("text that is not valid UTF-8") from None
