"""Lifecycle events: every transition appends one entry to the queue's Redis stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "queue": self.queue, "event": self.name, "job": self.job_id, **self.data}
