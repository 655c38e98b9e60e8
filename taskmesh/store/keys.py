"""Every Redis key name taskmesh uses, in one place.

All keys of one queue share the hash tag ``{<prefix>:<queue>}``, so every
script touches a single Cluster slot and receives all its keys through KEYS.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..names import (
    INVISIBLE_RE,
    JOB_ID_RE,
    MAX_JOB_ID,
    NAME_RE,
    SCHEDULE_JOB_ID_RE,
    check_job_id,
    check_name,
    check_new_job_id,
)

__all__ = [  # the name checks are re-exported for modules that import them from here (their home: taskmesh.names)
    "ENQUEUE_KEYS",
    "INVISIBLE_RE",
    "JOB_ID_RE",
    "MAX_JOB_ID",
    "NAME_RE",
    "QUEUE_KEY_NAMES",
    "SCHEDULE_JOB_ID_RE",
    "QueueKeys",
    "check_job_id",
    "check_name",
    "check_new_job_id",
    "claim_key",
    "queues_key",
    "schedules_key",
    "workers_key",
]

# The order is the KEYS layout documented in lua/lib.lua.
QUEUE_KEY_NAMES = (
    "jobs",
    "payloads",
    "waiting",
    "delayed",
    "events",
    "seq",
    "wakeup",
    "active",
    "completed",
    "failed",
    "cancelled",
    "meta",
)
#: The enqueue script touches only the first seven (fewer arguments on the hottest call).
ENQUEUE_KEYS = 7


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue; ``all`` is the KEYS list every script expects."""

    queue: str
    jobs: str
    payloads: str
    waiting: str
    delayed: str
    active: str
    completed: str
    failed: str
    cancelled: str
    events: str
    seq: str
    wakeup: str
    meta: str
    all: tuple[str, ...]
    #: The KEYS of the enqueue script (the first ENQUEUE_KEYS of ``all``).
    enqueue: tuple[str, ...]

    @property
    def cron(self) -> str:
        """The state of the schedules that enqueue to this queue (see ``lua/cron.lua``); same hash tag."""
        return self.jobs[: -len("jobs")] + "cron"

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        tag = f"{{{prefix}:{queue}}}"
        names = dict(zip(QUEUE_KEY_NAMES, (f"{tag}:{name}" for name in QUEUE_KEY_NAMES), strict=True))
        every = tuple(names.values())
        return cls(queue=queue, all=every, enqueue=every[:ENQUEUE_KEYS], **names)


def queues_key(prefix: str) -> str:
    """Set of queue names that producers and workers have used under ``prefix``."""
    return f"{{{prefix}}}:queues"


def workers_key(prefix: str) -> str:
    """Sorted set of live worker ids, scored by the time their heartbeat expires."""
    return f"{{{prefix}}}:workers"


def schedules_key(prefix: str) -> str:
    """Hash of schedule name -> JSON entry (task, queue, when); their state lives in each queue's slot."""
    return f"{{{prefix}}}:schedules"


def claim_key(keys: QueueKeys, worker_id: str) -> str:
    """A worker's claim list: a wake-up token moved here lets its queued one-job step lease."""
    return f"{keys.wakeup}:claim:{worker_id}"
