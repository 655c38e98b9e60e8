"""What the sync and the async store share: key names, argument building, reply parsing, typed results.

:class:`~taskmesh.store.queue.QueueStore` and :class:`~taskmesh.store.aqueue.AsyncQueueStore` are twins:
each method builds its call here, sends it, and parses the reply here, so the two differ only in how they
send (``await`` or not). Nothing outside ``taskmesh.store`` talks to Redis; the errors it lets through are
redis-py's, under the names below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeAlias

import redis
import redis.asyncio as aredis
from redis.client import NEVER_DECODE

from ..limits import QueueSettings, parse_settings
from ..names import check_name
from ..settings import Settings
from . import scripts
from .keys import QueueKeys, queues_key, schedules_key, workers_key
from .scripts import Leased

#: The redis-py clients behind a store, for callers that hand them on (tests, advanced use).
SyncRedis: TypeAlias = redis.Redis
AsyncRedis: TypeAlias = aredis.Redis
#: Anything Redis or the connection to it raised.
RedisError = redis.exceptions.RedisError
#: Redis answered, with an error: it refused the command (a key of the wrong type, a permission, OOM, BUSY).
ResponseError = redis.exceptions.ResponseError
#: Options for a read whose reply stays bytes (a value that is not UTF-8 is then the caller's to judge).
UNDECODED: dict[str, Any] = {NEVER_DECODE: []}
#: The job states, each a sorted set of the queue (their order is the one ``counts`` reports).
STATES = ("waiting", "delayed", "active", "completed", "failed", "cancelled")
#: One job as the enqueue script takes it: id, task, payload, priority, delay_ms, run_at_ms.
JobValues = tuple[str, str, str, int, int, int]
JOB_VALUES = 6


class Stepped(NamedTuple):
    """What one ``step`` call did: per update whether it was accepted, the jobs leased, the seconds until a
    delayed job is due or a rate limit lets a waiting one start (None: nothing), whether a rate limit held a
    waiting job back, why nothing was leased though jobs were asked for (None: it was not refused), and the
    error a refused event met (None: the events were written)."""

    accepted: list[bool]
    leased: list[Leased]
    next_due: float | None
    held: bool
    lease_refused: str | None
    events_refused: str | None


class EventEntry(NamedTuple):
    """One entry of a queue's event stream, as read: its fields are not checked yet (see ``Event.parse``)."""

    queue: str
    id: str
    fields: dict[str, str]


class ScheduleLook(NamedTuple):
    """A schedule's state in its queue (its JSON, None if it has none yet) and that node's clock (ms)."""

    state: str | None
    now_ms: int


class Wakeup(NamedTuple):
    """A wake-up token taken from a queue's wake-up list: the list and the token."""

    key: str
    token: str


class Versioned(Protocol):
    """A stored schedule entry, as a ``cron look`` needs it (``taskmesh.schedule.ScheduleEntry``)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def rev(self) -> int: ...


class StoreBase:
    """Settings, the key names of each queue, and the queues this store registered already.

    ``known`` may be shared between stores of one client (its sync store and the async one of each event
    loop), so a queue is registered once per client. ``options`` override the connection options the URL
    gives (``socket_timeout``, say).
    """

    def __init__(
        self, settings: Settings, *, known: set[str] | None = None, options: Mapping[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.known = set() if known is None else known
        self._options = dict(options or {})
        self._keys: dict[str, QueueKeys] = {}

    def keys(self, queue: str) -> QueueKeys:
        """The keys of ``queue`` (its name checked once)."""
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.of(self.settings.prefix, check_name("queue name", queue))
        return keys

    # -- building calls ------------------------------------------------------------

    def _enqueue_args(self, job: JobValues) -> list[Any]:
        return [self.settings.events_maxlen, 1, *job]

    def _enqueue_commands(self, batches: Mapping[str, Sequence[Any]]) -> tuple[list[tuple[Any, ...]], set[str]]:
        """The SADD of queues not yet registered (recorded once it ran), then one EVALSHA per queue;
        ``batches`` holds each queue's job values, ``JOB_VALUES`` per job."""
        commands: list[tuple[Any, ...]] = []
        new = set(batches) - self.known
        if new:
            commands.append(("SADD", queues_key(self.settings.prefix), *new))
        sha = scripts.sha("enqueue")
        for queue, values in batches.items():
            keys = self.keys(queue).enqueue
            count = len(values) // JOB_VALUES
            commands.append(("EVALSHA", sha, len(keys), *keys, self.settings.events_maxlen, count, *values))
        return commands, new

    def _control_args(self, op: str, *args: Any) -> list[Any]:
        return [self.settings.events_maxlen, op, *args]

    def _look_commands(
        self, entries: Sequence[Versioned], keep: bool, over: Mapping[str, str] | None
    ) -> list[tuple[Any, ...]]:
        """One ``cron look`` per schedule (its state for its version, and its queue's clock), to send in one
        pipeline; ``keep`` (a scheduler) stores the state's restart when it finds a new version. ``over``: per
        schedule name, a newer version the state may be found kept for, which the entry read replaced (see
        ``cron.lua``)."""
        sha = scripts.sha("cron")
        commands: list[tuple[Any, ...]] = []
        for entry in entries:
            keys = self.keys(entry.queue).all
            newer = (over or {}).get(entry.name, "")
            look = ("look", entry.name, entry.version, "1" if keep else "0", newer, entry.rev)
            commands.append(("EVALSHA", sha, len(keys), *keys, self.settings.events_maxlen, *look))
        return commands

    def _streams(self, cursors: Mapping[str, str]) -> dict[Any, Any]:
        return {self.keys(queue).events: since for queue, since in cursors.items()}

    def _queue_of(self, stream: str) -> str:
        return next(queue for queue, keys in self._keys.items() if keys.events == stream)

    # -- parsing replies -----------------------------------------------------------

    @staticmethod
    def _stepped(result: list[Any]) -> Stepped:
        accepted, leased, next_due = scripts.parse_step(result)
        refused, events = scripts.step_lease_refused(result), scripts.step_events_refused(result)
        return Stepped(accepted, leased, next_due, scripts.step_held(result), refused, events)

    @staticmethod
    def _enqueued(results: Iterable[Any]) -> list[list[tuple[bool, str]]]:
        return [scripts.parse_enqueue(result) for result in results]

    def _entries(self, found: Any) -> list[EventEntry]:
        """An XREAD reply as entries in stream order."""
        return [
            EventEntry(self._queue_of(stream), entry_id, fields)
            for stream, entries in found or []
            for entry_id, fields in entries
        ]

    @staticmethod
    def _looks(results: list[Any]) -> list[ScheduleLook | Exception]:
        """Each ``cron look``'s reply, or the error it met in its place (a state key of another type, say; on a
        cluster, one node out of reach: ``connect.CONNECTION_ERRORS``, which a caller raises)."""
        looks: list[ScheduleLook | Exception] = []
        for result in results:
            state = None if isinstance(result, Exception) or not result[0] else str(result[0])
            looks.append(result if isinstance(result, Exception) else ScheduleLook(state, int(result[1])))
        return looks

    @staticmethod
    def _counts(replies: Sequence[Any]) -> dict[str, int]:
        return dict(zip(STATES, (int(count) for count in replies), strict=True))

    @staticmethod
    def _settings_of(meta: Mapping[Any, Any]) -> QueueSettings:
        return parse_settings(meta)

    @staticmethod
    def _last_id(entries: Any) -> str:
        return str(entries[0][0]) if entries else "0-0"

    def _queues_key(self) -> str:
        return queues_key(self.settings.prefix)

    def _schedules_key(self) -> str:
        return schedules_key(self.settings.prefix)

    def _workers_key(self) -> str:
        return workers_key(self.settings.prefix)

    def _prefix_patterns(self) -> tuple[str, str]:
        """The SCAN patterns of every key under the prefix: ``{prefix}:...`` and ``{prefix:queue}:...``."""
        prefix = _glob_escape(self.settings.prefix)
        return f"{{{prefix}}}*", f"{{{prefix}:*"


def decode_stored(raw: Mapping[Any, Any]) -> dict[str, str | None]:
    """The schedules hash read with :data:`UNDECODED`: name -> stored JSON, None where it is not UTF-8
    (one bad entry, not an error of the whole read). A name that is not UTF-8 keeps its bytes as
    surrogates (``surrogateescape``), as a shell passes it to ``taskmesh schedules remove``."""
    stored: dict[str, str | None] = {}
    for name, value in raw.items():
        key = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)
        try:
            stored[key] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            stored[key] = None
    return stored


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
