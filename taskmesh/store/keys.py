"""Every Redis key name taskmesh uses, in one place.

All keys of one queue share the hash tag ``{<prefix>:<queue>}``, so every
script touches a single Cluster slot and receives all its keys through KEYS.
"""

from __future__ import annotations

from dataclasses import dataclass

# The KEYS layout of every script, in order: scripts.py declares each name as the Lua local K_<NAME> (the
# first ENQUEUE_KEYS in the prelude's head, the others after it). A script's own keys follow these (step: the
# worker's claim list, see claim_key). The scripts name one kind of key themselves, as it exists per task: a
# task's rate log (`rate:<task>`, from `rate`).
QUEUE_KEY_NAMES = (
    "jobs",  # hash: job id -> JSON record
    "payloads",  # hash: job id -> JSON payload
    "waiting",  # zset: higher priority first, then FIFO (see PRIO_SPAN in lua/lib.lua)
    "delayed",  # zset: score = due ms
    "events",  # stream of the queue's events
    "seq",  # counter: FIFO order and fencing tokens
    "wakeup",  # list of wake-up tokens for idle workers
    "active",  # zset: score = lease deadline ms
    "completed",  # zset: score = finish ms
    "failed",  # zset: score = finish ms
    "cancelled",  # zset: score = finish ms
    "meta",  # hash: 'paused'; limits as JSON {rate, per, max} under 'limit:' (the queue) and 'limit:<task>'
    "running",  # hash: task -> active jobs leased under the task's max
    "rate",  # zset: lease token -> ms, the queue's sliding-window log of leases (a task's: `rate:<task>`)
    "never",  # never created: the scripts' probe of maxmemory writes to it (see out_of_memory in lua/lib.lua)
    "cron",  # hash: schedule name -> JSON state of the schedules that enqueue to this queue (see lua/cron.lua)
)
#: The enqueue script gets only the first seven, the keys it touches (fewer arguments on the hottest call).
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
    running: str
    rate: str
    never: str
    #: The state of the schedules that enqueue to this queue (see ``lua/cron.lua``).
    cron: str
    all: tuple[str, ...]
    #: The KEYS of the enqueue script (the first ENQUEUE_KEYS of ``all``).
    enqueue: tuple[str, ...]

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
