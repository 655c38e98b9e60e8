"""The event bus: lifecycle events from the queues' Redis streams to a worker's sinks, apart from dispatch.

**How events arrive.** Every queue's events are already in its stream (``{prefix:queue}:events``).
A worker with sinks reads the streams of the queues it serves as one consumer of a Redis consumer
group (``XREADGROUP``), so an event goes to one worker's sinks, not to every worker's. The group is
named after the set of sinks (``sinks:log,webhook``): workers configured alike share the events
between them; a worker with other sinks reads its own group and so sees every event too.

**Bounded and apart from dispatch.** The reader runs beside the dispatcher on the worker's loop and
never touches a job. Each sink has its own bounded buffer (``sink_buffer`` events) drained by its own
task; when a sink is slow or stuck and its buffer is full, new events for that sink are dropped,
counted (``WorkerStats.events_dropped``) and logged, and the other sinks go on.

**Delivery: at least once, except drops.** An event is acknowledged (``XACK``) once every sink of the
worker has handled it (or dropped it, or raised). Events a worker read but had not acknowledged
when it died stay pending in the group; another worker of the group claims them (``XAUTOCLAIM``)
after ``CLAIM_IDLE`` seconds and delivers them again. So a sink can see an event twice (use the
event id to deduplicate) and misses events only when its buffer overflowed, or when a stream was
trimmed (``events_maxlen``) past events no worker had read yet. Events of a queue reach sinks only
while some worker with sinks serves it; a group starts with the events after its creation.

**Enrichment.** Stream entries carry the job id, not the task: the bus adds ``task`` (read once per
job from the job record and remembered) and, on ``completed``/``failed``/``cancelled``,
``duration_ms`` of the last attempt (finish minus start, by the Redis clock).

**Hostile entries.** Anything that can write to Redis can write to a stream, so every entry is checked
(``Event.parse``: known event name, valid job id, UTF-8 text, at most ``MAX_EVENT_BYTES``). An entry
that fails the check, or whose handling raises, is skipped: acknowledged at once (it never stays pending
for the next worker), counted (``WorkerStats.events_skipped``, and ``EventBus.skipped``) and logged with
its id, at most once per ``WARN_EVERY`` seconds; the entries after it go on to the sinks. A job record
that is not what taskmesh writes only leaves its events without ``task`` or ``duration_ms``. Any other
error of the reader is logged with its traceback and the reader goes on after a pause (1 s doubling to
30 s while it repeats); the events it had read come back through the claim (``CLAIM_IDLE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

from ..backoff import Backoff
from ..events import FINAL_EVENTS, Event, MalformedEvent
from ..names import NAME_RE
from ..store import EventGroup, GroupMissing, RedisError, ResponseError, connect
from ..store.groups import GroupEntry

if TYPE_CHECKING:
    from ..dispatch.worker import WorkerStats
    from ..settings import Settings
    from .base import Sink

log = logging.getLogger("taskmesh.sinks")

#: An event read by a consumer and not acknowledged for this long is taken over by another worker.
CLAIM_IDLE = 60.0
#: How often each worker looks for such events (± 50%).
CLAIM_EVERY = 15.0
#: A consumer with nothing pending, idle this long (its worker is gone), is removed from the group.
FORGET_IDLE = 3600.0
READ_COUNT = 256
READ_BLOCK_MS = 1000
#: How long a stopping worker lets its sinks catch up (events left then are claimed by other workers).
STOP_WAIT = 5.0
#: Jobs whose task name is remembered between their events.
REMEMBER = 10_000
#: At most one warning per sink per this many seconds about drops or errors (and one about skipped entries).
WARN_EVERY = 10.0
#: The pause after an unexpected error of the reader, growing while the errors repeat.
REREAD = Backoff.exponential(1.0, cap=30.0)


def group_name(sinks: Mapping[str, object]) -> str:
    return "sinks:" + ",".join(sorted(sinks))


@dataclass(slots=True)
class _Pending:
    """One event of ``queue`` handed to the sinks; acknowledged when ``left`` reaches 0."""

    queue: str
    id: str
    left: int


class _Outlet:
    """One sink, its bounded buffer and the task that drains it."""

    def __init__(self, name: str, sink: Sink, size: int) -> None:
        self.name = name
        self.sink = sink
        self.buffer: asyncio.Queue[tuple[Event, _Pending]] = asyncio.Queue(size)
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.errors = 0
        self.warned = 0.0  # monotonic time of the last warning
        self.unreported = 0  # drops and errors since the last warning


class EventBus:
    """Feeds ``sinks`` with the events of ``settings.queues`` (see the module docstring)."""

    def __init__(self, settings: Settings, sinks: Mapping[str, Sink], stats: WorkerStats, consumer: str) -> None:
        self._settings = settings
        self._queues = list(settings.queues)
        self._outlets = [_Outlet(name, sink, settings.sink_buffer) for name, sink in sinks.items()]
        self._stats = stats
        self.group = group_name(sinks)
        self.consumer = consumer
        self._acks: dict[str, list[str]] = defaultdict(list)  # queue -> ids to acknowledge
        self._inflight: dict[str, set[str]] = defaultdict(set)  # queue -> ids some sink still has
        self._tasks: OrderedDict[str, str] = OrderedDict()  # job id -> task name, most recent last
        self._group: EventGroup | None = None
        self._feeders: list[asyncio.Task[None]] = []
        self.skipped = 0  # malformed entries (or entries whose handling failed) acknowledged unseen
        self._skips = _Skips()

    async def start(self) -> None:
        """Join the group on every queue's stream (creating it at the stream's end), then start reading."""
        if self._group is None:
            # Invalid UTF-8 in an entry comes through as lone surrogates, which Event.parse refuses.
            self._group = EventGroup(self._settings, self.group, self.consumer, READ_BLOCK_MS / 1000)
        for queue in self._queues:
            await self._group.join(queue)
        for outlet in self._outlets:
            outlet.task = asyncio.create_task(self._drain(outlet), name=f"taskmesh-sink-{outlet.name}")
        self._feeders = [asyncio.create_task(self._feed(q), name=f"taskmesh-events-{q}") for q in self._queues]

    async def stop(self) -> None:
        """Read what is left in the streams, give the sinks ``STOP_WAIT`` to catch up, acknowledge, close the sinks."""
        await _cancel(self._feeders)
        try:
            for queue in self._queues:
                await self._recover(queue)
                await self._read(queue, block=None)  # the last events, this worker's final results among them
        except Exception as exc:  # Redis gone: what is unread stays for the group's other workers
            log.warning("event bus: cannot read the last events (%s)", exc)
        buffers = [asyncio.ensure_future(outlet.buffer.join()) for outlet in self._outlets]
        _, late = await asyncio.wait(buffers, timeout=STOP_WAIT) if buffers else (set(), set())
        for waiting in late:
            waiting.cancel()
        await _cancel([outlet.task for outlet in self._outlets if outlet.task is not None])
        self._report_skips(force=True)
        for outlet in self._outlets:
            self._report(outlet, force=True)
            try:
                await asyncio.wait_for(outlet.sink.close(), STOP_WAIT)
            except Exception:
                log.exception("event sink %s: close failed", outlet.name)
        if self._group is not None:
            with contextlib.suppress(Exception):
                for queue in self._queues:
                    await self._flush(queue)
                    await self._leave(queue)
            await self._group.aclose()

    # -- reading -----------------------------------------------------------------

    async def _feed(self, queue: str) -> None:
        """Read the queue's events until cancelled: no error ends it (see "Hostile entries" above)."""
        assert self._group is not None
        group, loop = self._group, asyncio.get_running_loop()
        next_claim = loop.time() + CLAIM_EVERY * random.uniform(0.5, 1.5)
        failures, rejoin = 0, False
        while True:
            try:
                if rejoin:  # here, not in the handler below, where an error would end the reader
                    await group.join(queue)
                    rejoin = False
                await self._flush(queue)
                if loop.time() >= next_claim:
                    next_claim = loop.time() + CLAIM_EVERY * random.uniform(0.5, 1.5)
                    await self._claim(queue)
                await self._read(queue, block=READ_BLOCK_MS)
                failures = 0
            except GroupMissing:  # the stream was deleted (and the group with it)
                rejoin = True
                continue
            except ResponseError as exc:
                log.error("event bus: reading queue %s failed: %s", queue, exc)
                await asyncio.sleep(1.0)
            except (RedisError, OSError) as exc:
                log.warning("event bus: redis unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:
                failures += 1
                pause = REREAD.delay(failures)
                log.exception("event bus: reading queue %s failed; reading again in %.1f s", queue, pause)
                await asyncio.sleep(pause)

    async def _read(self, queue: str, block: int | None) -> None:
        """New events of the queue for this consumer; without ``block``, until none are left (bounded)."""
        assert self._group is not None
        for _ in range(1 if block is not None else 100):
            entries = await self._group.read_new(queue, READ_COUNT, block)
            await self._publish(queue, entries)
            if len(entries) < READ_COUNT:
                return

    async def _recover(self, queue: str) -> None:
        """Deliver what this consumer read but never handed to its sinks (a read cut short by the stop)."""
        assert self._group is not None
        start = "0"
        for _ in range(100):
            entries = await self._group.read_own(queue, start, READ_COUNT)
            if not entries:
                return
            start = entries[-1][0]
            await self._redeliver(queue, entries)

    async def _claim(self, queue: str) -> None:
        """Take over events other consumers read and never acknowledged (their worker died), while there is room."""
        assert self._group is not None
        start = "0-0"
        room = min(outlet.buffer.maxsize - outlet.buffer.qsize() for outlet in self._outlets)
        while room >= READ_COUNT:
            start, entries = await self._group.claim(queue, int(CLAIM_IDLE * 1000), start, READ_COUNT)
            await self._redeliver(queue, entries)
            room -= len(entries)
            if start == "0-0":
                break
        await self._forget(queue)

    async def _redeliver(self, queue: str, entries: list[GroupEntry]) -> None:
        """Publish events read again (pending ones) that this worker's sinks do not have yet; acknowledge
        those trimmed from the stream before anyone delivered them (they come back without fields)."""
        mine = self._handled(queue)
        self._acks[queue] += [entry_id for entry_id, fields in entries if entry_id is not None and not fields]
        await self._publish(queue, [(i, f) for i, f in entries if i is not None and f and i not in mine])

    def _handled(self, queue: str) -> set[str]:
        """Ids this worker's sinks have, or have done with and not acknowledged yet: never delivered again."""
        return self._inflight[queue] | set(self._acks.get(queue, ()))

    async def _forget(self, queue: str) -> None:
        """Remove consumers of workers long gone that have nothing pending."""
        assert self._group is not None
        for consumer in await self._group.consumers(queue):
            if consumer.name != self.consumer and not consumer.pending and consumer.idle_ms / 1000 > FORGET_IDLE:
                await self._group.remove_consumer(queue, consumer.name)

    async def _leave(self, queue: str) -> None:
        """A stopping worker leaves the group when it has nothing pending (else its events wait to be claimed)."""
        assert self._group is not None
        if not await self._group.has_pending(queue):
            await self._group.remove_consumer(queue, self.consumer)

    async def _flush(self, queue: str) -> None:
        ids = self._acks.pop(queue, None)
        if ids:
            assert self._group is not None
            await self._group.ack(queue, ids)

    # -- delivering --------------------------------------------------------------

    async def _publish(self, queue: str, entries: list[GroupEntry]) -> None:
        """Hand the entries to the sinks in stream order, skipping those that are not events (``_skip``)."""
        if not entries:
            return
        events: list[Event] = []
        for entry_id, fields in entries:
            try:
                events.append(Event.parse(queue, entry_id, fields))
            except Exception as exc:  # MalformedEvent, or a bug: either way this entry only
                self._skip(queue, entry_id, exc)
        for event in await self._enrich(queue, events):
            await self._offer(queue, event)

    async def _offer(self, queue: str, event: Event) -> None:
        pending = _Pending(queue, event.id, len(self._outlets))
        self._inflight[queue].add(event.id)
        for outlet in self._outlets:
            if outlet.buffer.full():
                await asyncio.sleep(0)  # a sink that keeps up empties its buffer meanwhile
            try:
                outlet.buffer.put_nowait((event, pending))
            except asyncio.QueueFull:
                outlet.dropped += 1
                outlet.unreported += 1
                self._stats.events_dropped += 1
                self._report(outlet)
                self._done(pending)

    def _skip(self, queue: str, entry_id: str, error: Exception) -> None:
        """Acknowledge an entry no sink will see, so that it never stays pending; count and report it."""
        self._acks[queue].append(entry_id)
        self.skipped += 1
        self._stats.events_skipped += 1
        self._skips.unreported += 1
        self._skips.last = (queue, entry_id, error)
        self._report_skips()

    def _report_skips(self, force: bool = False) -> None:
        """Warn about skipped entries like ``_report`` about a sink: the first at once, then at most every
        ``WARN_EVERY`` seconds, naming the last one (with its traceback when it was not merely malformed)."""
        skips, now = self._skips, time.monotonic()
        if not skips.unreported or skips.last is None:
            return
        if not force and skips.warned and now - skips.warned < WARN_EVERY:
            return
        queue, entry_id, error = skips.last
        more = f" and {skips.unreported - 1} more since the last warning" if skips.unreported > 1 else ""
        skips.warned, skips.unreported = now, 0
        log.warning(
            "event bus: skipped entry %s of queue %s (%s)%s; %d skipped so far",
            entry_id,
            queue,
            error if isinstance(error, MalformedEvent) else f"{error!r:.200}",
            more,
            self.skipped,
            exc_info=None if isinstance(error, MalformedEvent) else error,
        )

    async def _drain(self, outlet: _Outlet) -> None:
        while True:
            event, pending = await outlet.buffer.get()
            try:
                await outlet.sink.emit(event)
            except Exception as exc:
                outlet.errors += 1
                outlet.unreported += 1
                self._stats.sink_errors += 1
                self._report(outlet, exc)
            finally:
                self._done(pending)
                outlet.buffer.task_done()

    def _done(self, pending: _Pending) -> None:
        pending.left -= 1
        if pending.left == 0:
            self._inflight[pending.queue].discard(pending.id)
            self._acks[pending.queue].append(pending.id)

    def _report(self, outlet: _Outlet, error: Exception | None = None, force: bool = False) -> None:
        """Warn about a sink's drops and errors: the first at once, then at most every ``WARN_EVERY`` seconds."""
        now = time.monotonic()
        if not outlet.unreported or (not force and outlet.warned and now - outlet.warned < WARN_EVERY):
            return
        outlet.warned, outlet.unreported = now, 0
        log.warning(
            "event sink %s: %d event(s) dropped (its buffer of %d was full), %d error(s) so far%s",
            outlet.name,
            outlet.dropped,
            outlet.buffer.maxsize,
            outlet.errors,
            f"; last: {error!r}" if error is not None else "",
        )

    async def _enrich(self, queue: str, events: list[Event]) -> list[Event]:
        """Add ``task`` to job events and ``duration_ms`` to final ones, from the job records; returns the
        events that are left (one whose enrichment fails is skipped, the others go on)."""
        assert self._group is not None
        wanted = sorted(
            {e.job_id for e in events if e.job_id and (e.name in FINAL_EVENTS or e.job_id not in self._tasks)}
        )
        durations: dict[str, int | None] = {}
        if wanted:
            for job_id, raw in zip(wanted, await self._group.job_records(queue, wanted), strict=True):
                task, durations[job_id] = _job_facts(raw)
                if task is not None:
                    self._remember(job_id, task)
        enriched: list[Event] = []
        for event in events:
            try:
                self._annotate(event, durations.get(event.job_id))
            except Exception as exc:
                self._skip(queue, event.id, exc)
                continue
            enriched.append(event)
        return enriched

    def _annotate(self, event: Event, duration_ms: int | None) -> None:
        if not event.job_id:
            return
        event.data.pop("task", None)  # on a job event, only the bus says these, from the job record
        event.data.pop("duration_ms", None)
        task = self._tasks.get(event.job_id)
        if task is not None:
            event.data["task"] = task
        if event.name in FINAL_EVENTS:
            self._tasks.pop(event.job_id, None)
            if duration_ms is not None:
                event.data["duration_ms"] = str(duration_ms)

    def _remember(self, job_id: str, task: str) -> None:
        self._tasks[job_id] = task
        self._tasks.move_to_end(job_id)
        while len(self._tasks) > REMEMBER:
            self._tasks.popitem(last=False)


@dataclass(slots=True)
class _Skips:
    """Entries skipped since the last warning about them, and the last one: (queue, entry id, error)."""

    unreported: int = 0
    warned: float = 0.0  # monotonic time of the last warning
    last: tuple[str, str, Exception] | None = None


def _job_facts(raw: object) -> tuple[str | None, int | None]:
    """The task name and the last attempt's run time (ms) a job record tells; each None when it tells
    none: no record, or not the JSON object taskmesh writes (anything that can write to Redis can write
    a record), a task that is not a task name, times that are not numbers or run backwards."""
    try:
        record = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(record, dict):
        return None, None
    task = record.get("task")
    started, finished = record.get("started"), record.get("finished")
    duration: int | None = None
    if _is_number(started) and _is_number(finished):
        with contextlib.suppress(OverflowError):  # ints past a float's range
            elapsed = finished - started
            if math.isfinite(elapsed) and 0 <= elapsed < 2**53:
                duration = int(elapsed)
    return (task if isinstance(task, str) and NAME_RE.fullmatch(task) else None), duration


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel them (until cancelled: see ``connect.cancel_all``) and log the errors of those that failed."""
    await connect.cancel_all(tasks, pause=0.1)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("event bus: %s failed", task.get_name(), exc_info=task.exception())
