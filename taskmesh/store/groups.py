"""A consumer of a Redis consumer group on the queues' event streams: the event bus's reads (see ``sinks/bus.py``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis

from ..settings import Settings
from . import connect
from .base import AsyncRedis, StoreBase

#: An entry as a group read gives it: its id and fields (None for an entry trimmed from the stream before
#: anyone acknowledged it).
GroupEntry = tuple[str, Any]


class GroupMissing(redis.exceptions.ResponseError):
    """The stream's consumer group is gone (the stream was deleted): join it again."""


class Consumer(NamedTuple):
    """A consumer of the group: its name, the entries it read and did not acknowledge, its idle time."""

    name: str
    pending: int
    idle_ms: int


class EventGroup(StoreBase):
    """``consumer`` in the consumer group ``group`` of each queue's event stream, on a connection of its own
    whose socket timeout exceeds ``block_seconds`` (the longest blocking read). Entries that are not UTF-8
    come through with lone surrogates, which ``Event.parse`` refuses."""

    def __init__(self, settings: Settings, group: str, consumer: str, block_seconds: float) -> None:
        super().__init__(settings)
        self.group = group
        self.consumer = consumer
        self._block = block_seconds
        self._redis: AsyncRedis | None = None

    @property
    def redis(self) -> AsyncRedis:
        if self._redis is None:
            url = self.settings.redis_url
            self._redis = connect.blocking_client(url, self._block, encoding_errors="surrogateescape")
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def join(self, queue: str) -> None:
        """Create the group at the end of the queue's stream (and the stream, if need be); one that exists is kept."""
        try:
            await self.redis.xgroup_create(self.keys(queue).events, self.group, id="$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, queue: str, count: int, block: int | None) -> list[GroupEntry]:
        """Entries no consumer of the group has read, waiting up to ``block`` ms for one (None: not)."""
        with _group_errors():
            reply: Any = await self.redis.xreadgroup(
                self.group, self.consumer, {self.keys(queue).events: ">"}, count=count, block=block
            )
        return [entry for _, found in reply or [] for entry in found]

    async def read_own(self, queue: str, after: str, count: int) -> list[GroupEntry]:
        """Entries this consumer read and did not acknowledge, after the id ``after``."""
        with _group_errors():
            reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.keys(queue).events: after}, count)
        return [entry for _, found in reply or [] for entry in found]

    async def claim(self, queue: str, idle_ms: int, start: str, count: int) -> tuple[str, list[GroupEntry]]:
        """Take over entries other consumers read and left unacknowledged for ``idle_ms``, from ``start``:
        (where the next call starts, ``0-0`` when the scan is over; the entries)."""
        with _group_errors():
            reply: Any = await self.redis.xautoclaim(
                self.keys(queue).events, self.group, self.consumer, idle_ms, start, count=count
            )
        start = reply[0]
        return start.decode() if isinstance(start, bytes) else str(start), list(reply[1])

    async def consumers(self, queue: str) -> list[Consumer]:
        with _group_errors():
            found: Any = await self.redis.xinfo_consumers(self.keys(queue).events, self.group)
        return [Consumer(str(c.get("name")), int(c.get("pending") or 0), int(c.get("idle", 0))) for c in found]

    async def remove_consumer(self, queue: str, name: str) -> None:
        with _group_errors():
            await self.redis.xgroup_delconsumer(self.keys(queue).events, self.group, name)

    async def has_pending(self, queue: str) -> bool:
        """Whether this consumer read entries it did not acknowledge."""
        with _group_errors():
            pending = await self.redis.xpending_range(
                self.keys(queue).events, self.group, "-", "+", 1, consumername=self.consumer
            )
        return bool(pending)

    async def ack(self, queue: str, ids: Sequence[str]) -> None:
        with _group_errors():
            await self.redis.xack(self.keys(queue).events, self.group, *ids)

    async def job_records(self, queue: str, ids: Sequence[str]) -> list[str | None]:
        """The records (JSON) of the queue's jobs ``ids``, None for each that has none."""
        found = await self.redis.hmget(self.keys(queue).jobs, list(ids))
        return [None if raw is None else str(raw) for raw in found]


@contextmanager
def _group_errors() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        if "NOGROUP" in str(exc):
            raise GroupMissing(str(exc)) from exc
        raise
