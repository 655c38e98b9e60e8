"""Every Redis key name taskmesh uses, in one place.

All keys of one queue share the hash tag ``{<prefix>:<queue>}``, so every
script touches a single Cluster slot and receives all its keys through KEYS.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
#: A job id in plain ASCII: 1-200 printable characters without spaces, ``{`` or ``}``. The fast path of
#: :func:`check_job_id`, which also takes printable non-ASCII characters (use it to check an id).
JOB_ID_RE = re.compile(r"[!-z|~]{1,200}")
MAX_JOB_ID = 200
_ASCII_ID_RUNS = re.compile(r"[!-z|~]+")
#: What shows as nothing, or as a blank, though its category is neither C nor Z: the Unicode
#: Default_Ignorable_Code_Point characters (DerivedCoreProperties.txt: soft hyphen, fillers, joiners,
#: variation selectors, invisible operators, tags; the C ones among them too), and symbols that look blank
#: (U+2800 BRAILLE PATTERN BLANK, U+1D159 MUSICAL SYMBOL NULL NOTEHEAD, U+16FE4 KHITAN SMALL SCRIPT FILLER).
INVISIBLE_RE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
    "\u2800\U0001d159\U00016fe4]"
)
#: The ids the schedules' jobs get (``<schedule name>@<tick ms>``, see ``lua/cron.lua``): no producer may take one.
SCHEDULE_JOB_ID_RE = re.compile(NAME_RE.pattern + r"@[0-9]+")

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


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid queue, task or prefix name, else raise ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} {value!r}: use 1-100 characters from letters, digits and _ . : -")
    return value


def check_job_id(value: str) -> str:
    """Return ``value`` if it is a valid job id, else raise ValueError (TypeError if it is not a string).

    Printable means no character of the Unicode categories C (controls, format characters such as bidi
    overrides, private use, surrogates, unassigned) or Z (spaces of any kind, line and paragraph
    separators), and none of :data:`INVISIBLE_RE` (fillers, variation selectors, a blank braille cell):
    an id reads the same wherever it is shown.
    """
    if isinstance(value, str) and JOB_ID_RE.fullmatch(value):  # the common case first: enqueue is hot
        return value
    if not isinstance(value, str):
        raise TypeError(f"a job id must be a string, not {type(value).__name__}")
    if not value.isascii() and _printable(value):
        return value
    raise ValueError(f"invalid job id {_shown(value)}: use 1-200 printable characters without spaces, '{{' or '}}'")


def check_new_job_id(value: str) -> str:
    """:func:`check_job_id` for the id a producer gives a new job: the ids of schedules' jobs are reserved."""
    if isinstance(value, str) and "@" not in value and JOB_ID_RE.fullmatch(value):
        return value
    check_job_id(value)
    if SCHEDULE_JOB_ID_RE.fullmatch(value):
        raise ValueError(
            f"job id {value!r} is reserved: <name>@<digits> is the id of a schedule's job (one per tick); "
            "give an id of another form (e.g. without '@')"
        )
    return value


def _printable(value: str) -> bool:
    """Whether ``value`` (not all ASCII) is a job id: the slow path of :func:`check_job_id`."""
    if not 0 < len(value) <= MAX_JOB_ID:
        return False
    others = _ASCII_ID_RUNS.sub("", value)  # what the ASCII rule does not take: each must be printable non-ASCII
    if INVISIBLE_RE.search(others):
        return False
    return all(not char.isascii() and unicodedata.category(char)[0] not in "CZ" for char in others)


def _shown(value: str, limit: int = 60) -> str:
    """``value``'s repr (which escapes unprintable characters), cut short for an error message."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


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
