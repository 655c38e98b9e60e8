"""The producer side: enqueue jobs, read their status, wait for results, follow events.

Every call has an asyncio twin (``aenqueue``, ``astatus``, ...), so an async
web handler never blocks.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from .events import FINAL_EVENTS, Event
from .job import Call, JobHandle, JobState, JobStatus, encode_payload
from .settings import Settings
from .store import scripts
from .store.keys import QueueKeys, check_job_id, check_name, queues_key, workers_key
from .task import Task, check_delay, check_priority

STATES = tuple(state.value for state in JobState)
# Blocking reads stay well under the connection socket timeout (redis-py defaults to 5 s).
_BLOCK_MS = 1000


class Client:
    """Connection to one taskmesh installation (a Redis URL and a key prefix)."""

    def __init__(self, url: str | None = None, *, prefix: str | None = None, settings: Settings | None = None) -> None:
        base = settings or Settings.load(pyproject=None)
        self.settings = base.replace(**{k: v for k, v in {"redis_url": url, "prefix": prefix}.items() if v is not None})
        self._redis: redis.Redis | None = None
        self._aredis: aredis.Redis | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()

    def __repr__(self) -> str:
        return f"<Client {self.settings.redis_url} prefix={self.settings.prefix}>"

    # -- connections -------------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        return self._redis

    @property
    def aredis(self) -> aredis.Redis:
        """The async connection pool of the running event loop (made anew for a new loop)."""
        loop = asyncio.get_running_loop()
        if self._aredis is None or self._aloop is not loop:
            self._aredis = aredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
            self._aloop = loop
        return self._aredis

    def keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.of(self.settings.prefix, check_name("queue name", queue))
        return keys

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    async def aclose(self) -> None:
        if self._aredis is not None:
            await self._aredis.aclose()
            self._aredis = None

    # -- enqueue -------------------------------------------------------------

    def enqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Queue ``task`` (a Task or a task name) with JSON arguments; returns the handle at once."""
        return self.submit(_call(task, args, kwargs))

    async def aenqueue(self, task: Task[Any, Any] | str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        return await self.asubmit(_call(task, args, kwargs))

    def submit(self, call: Call) -> JobHandle[Any]:
        """Queue one described job (options included). An existing job id returns that job, ``created=False``."""
        job = self._new_job(call)
        if call.queue not in self._known_queues:
            self.redis.sadd(queues_key(self.settings.prefix), call.queue)
            self._known_queues.add(call.queue)
        keys = self.keys(call.queue).all
        result = scripts.call(self.redis, "enqueue", keys, scripts.enqueue_args(self.settings, [job]))
        return JobHandle(self, job.id, call.queue, scripts.parse_enqueue(result)[0][0])

    async def asubmit(self, call: Call) -> JobHandle[Any]:
        job = self._new_job(call)
        if call.queue not in self._known_queues:
            await self.aredis.sadd(queues_key(self.settings.prefix), call.queue)
            self._known_queues.add(call.queue)
        keys = self.keys(call.queue).all
        result = await scripts.acall(self.aredis, "enqueue", keys, scripts.enqueue_args(self.settings, [job]))
        return JobHandle(self, job.id, call.queue, scripts.parse_enqueue(result)[0][0])

    def enqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        """Queue many jobs in one round trip (one script call per queue). Nothing is written if one is invalid."""
        batches, order = self._prepare(calls)
        with self.redis.pipeline(transaction=False) as pipe:
            new_queues = self._register_queues(pipe, batches)
            for queue, jobs in batches.items():
                pipe.evalsha(
                    scripts.sha("enqueue"),
                    len(self.keys(queue).all),
                    *self.keys(queue).all,
                    *scripts.enqueue_args(self.settings, jobs),
                )
            results = scripts.run_pipeline(self.redis, pipe)
        self._known_queues |= new_queues
        return self._handles(batches, order, results[-len(batches) :])

    async def aenqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[Any]]:
        batches, order = self._prepare(calls)
        async with self.aredis.pipeline(transaction=False) as pipe:
            new_queues = self._register_queues(pipe, batches)
            for queue, jobs in batches.items():
                pipe.evalsha(
                    scripts.sha("enqueue"),
                    len(self.keys(queue).all),
                    *self.keys(queue).all,
                    *scripts.enqueue_args(self.settings, jobs),
                )
            results = await scripts.arun_pipeline(self.aredis, pipe)
        self._known_queues |= new_queues
        return self._handles(batches, order, results[-len(batches) :])

    def _prepare(self, calls: Iterable[Call]) -> tuple[dict[str, list[scripts.NewJob]], list[tuple[str, int]]]:
        batches: dict[str, list[scripts.NewJob]] = {}
        order: list[tuple[str, int]] = []
        for call in calls:
            job = self._new_job(call)
            batch = batches.setdefault(call.queue, [])
            order.append((call.queue, len(batch)))
            batch.append(job)
        return batches, order

    def _new_job(self, call: Call) -> scripts.NewJob:
        """Validate and encode one call; raises before anything is written."""
        check_name("task name", call.task)
        self.keys(call.queue)
        job_id = os.urandom(16).hex() if call.job_id is None else check_job_id(call.job_id)
        run_at_ms = 0
        if call.run_at is not None and call.run_at.timestamp() > time.time():
            run_at_ms = int(call.run_at.timestamp() * 1000)
        delay = check_delay(call.delay)
        delay_ms = 0 if delay is None else max(0, int(delay * 1000))
        payload = encode_payload(call, self.settings.max_payload_bytes)
        return scripts.NewJob(job_id, call.task, payload, check_priority(call.priority), delay_ms, run_at_ms)

    def _register_queues(self, pipe: Any, batches: dict[str, list[scripts.NewJob]]) -> set[str]:
        """Queue the SADD of queues not yet registered; the caller records them once the pipeline ran."""
        new = set(batches) - self._known_queues
        if new:
            pipe.sadd(queues_key(self.settings.prefix), *new)
        return new

    def _handles(
        self, batches: dict[str, list[scripts.NewJob]], order: list[tuple[str, int]], results: list[Any]
    ) -> list[JobHandle[Any]]:
        parsed = {queue: scripts.parse_enqueue(res) for queue, res in zip(batches, results, strict=True)}
        return [JobHandle(self, batches[q][i].id, q, parsed[q][i][0]) for q, i in order]

    # -- reading -------------------------------------------------------------

    def status(self, job_id: str, queue: str = "default") -> JobStatus | None:
        raw = self.redis.hget(self.keys(queue).jobs, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    async def astatus(self, job_id: str, queue: str = "default") -> JobStatus | None:
        raw = await self.aredis.hget(self.keys(queue).jobs, job_id)
        return None if raw is None else JobStatus.from_record(job_id, queue, raw)

    def job(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        """A handle on an existing job, or None."""
        exists = self.redis.hexists(self.keys(queue).jobs, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    async def ajob(self, job_id: str, queue: str = "default") -> JobHandle[Any] | None:
        exists = await self.aredis.hexists(self.keys(queue).jobs, job_id)
        return JobHandle(self, job_id, queue, created=False) if exists else None

    def counts(self, queue: str = "default") -> dict[str, int]:
        """Number of jobs per state in ``queue``."""
        keys = self.keys(queue)
        with self.redis.pipeline(transaction=False) as pipe:
            for state in STATES:
                pipe.zcard(getattr(keys, state))
            return dict(zip(STATES, pipe.execute(), strict=True))

    async def acounts(self, queue: str = "default") -> dict[str, int]:
        keys = self.keys(queue)
        async with self.aredis.pipeline(transaction=False) as pipe:
            for state in STATES:
                pipe.zcard(getattr(keys, state))
            return dict(zip(STATES, await pipe.execute(), strict=True))

    def queues(self) -> list[str]:
        """Queue names used under this prefix (by producers or workers)."""
        return sorted(str(q) for q in self.redis.smembers(queues_key(self.settings.prefix)))

    def workers(self) -> list[str]:
        """Ids of workers whose heartbeat is current."""
        key = workers_key(self.settings.prefix)
        return [str(w) for w in self.redis.zrangebyscore(key, time.time() * 1000, "+inf")]

    # -- waiting and events ----------------------------------------------------

    def wait(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Block until the job is finished (None on timeout). Follows the event stream; no polling loop."""
        stream = self.keys(queue).events
        deadline = _deadline(timeout)
        cursor = _last_id(self.redis.xrevrange(stream, count=1))
        while True:
            status = self.status(job_id, queue)
            if status is None or status.state.finished:
                return status
            while True:
                block = _block_ms(deadline)
                if block is None:
                    return None
                entries = _entries(self.redis.xread({stream: cursor}, count=1000, block=block))
                cursor = entries[-1][1] if entries else cursor
                if _finished_in(job_id, entries):
                    break

    async def await_(self, job_id: str, queue: str = "default", timeout: float | None = None) -> JobStatus | None:
        """Async twin of :meth:`wait`."""
        stream = self.keys(queue).events
        deadline = _deadline(timeout)
        cursor = _last_id(await self.aredis.xrevrange(stream, count=1))
        while True:
            status = await self.astatus(job_id, queue)
            if status is None or status.state.finished:
                return status
            while True:
                block = _block_ms(deadline)
                if block is None:
                    return None
                entries = _entries(await self.aredis.xread({stream: cursor}, count=1000, block=block))
                cursor = entries[-1][1] if entries else cursor
                if _finished_in(job_id, entries):
                    break

    def events(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> Iterator[Event]:
        """Follow events live. ``since``: ``"$"`` (from now), ``"0"`` (from the start) or an event id.

        ``"$"`` is resolved by this call, so an event appended after it returns is never missed.
        Ends after ``timeout`` seconds without a new event (None: never; 0: return what is there).
        """
        queues = (queues,) if isinstance(queues, str) else queues
        streams: dict[Any, Any] = {self.keys(q).events: since for q in queues}
        if since == "$":
            with self.redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xrevrange(stream, count=1)
                streams = {s: _last_id(last) for s, last in zip(streams, pipe.execute(), strict=True)}
        return self._follow(streams, timeout)

    def _follow(self, streams: dict[Any, Any], timeout: float | None) -> Iterator[Event]:
        deadline = _deadline(timeout)
        while True:
            block = _block_ms(deadline)  # None once the deadline passed: one last look without blocking
            entries = _entries(self.redis.xread(streams, count=500, block=block))
            if entries:
                deadline = _deadline(timeout)
            elif block is None:
                return
            for stream, entry_id, fields in entries:
                streams[stream] = entry_id
                yield Event.from_entry(self._queue_of(stream), entry_id, fields)

    async def aevents(
        self, queues: Sequence[str] = ("default",), since: str = "$", timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """Async twin of :meth:`events`; here ``"$"`` is resolved when iteration starts."""
        queues = (queues,) if isinstance(queues, str) else queues
        streams: dict[Any, Any] = {self.keys(q).events: since for q in queues}
        if since == "$":
            async with self.aredis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xrevrange(stream, count=1)
                streams = {s: _last_id(last) for s, last in zip(streams, await pipe.execute(), strict=True)}
        deadline = _deadline(timeout)
        while True:
            block = _block_ms(deadline)
            entries = _entries(await self.aredis.xread(streams, count=500, block=block))
            if entries:
                deadline = _deadline(timeout)
            elif block is None:
                return
            for stream, entry_id, fields in entries:
                streams[stream] = entry_id
                yield Event.from_entry(self._queue_of(stream), entry_id, fields)

    def _queue_of(self, stream: str) -> str:
        return next(q for q, keys in self._keys.items() if keys.events == stream)


def _call(task: Task[Any, Any] | str, args: Sequence[Any], kwargs: dict[str, Any]) -> Call:
    if isinstance(task, Task):
        return Call(task.name, tuple(args), kwargs, queue=task.queue, priority=task.priority)
    return Call(task, tuple(args), kwargs)


def _last_id(entries: Any) -> str:
    return str(entries[0][0]) if entries else "0-0"


def _entries(found: Any) -> list[tuple[str, str, dict[str, str]]]:
    """Flatten an XREAD reply into (stream, entry id, fields)."""
    return [(stream, entry_id, fields) for stream, entries in found or [] for entry_id, fields in entries]


def _finished_in(job_id: str, entries: list[tuple[str, str, dict[str, str]]]) -> bool:
    return any(f.get("job") == job_id and f.get("event") in FINAL_EVENTS for _, _, f in entries)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _block_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return _BLOCK_MS
    left = deadline - time.monotonic()
    return None if left <= 0 else max(1, min(_BLOCK_MS, int(left * 1000)))


_default: Client | None = None


def default_client() -> Client:
    """The process-wide client used by ``Task.enqueue``: settings from ``TASKMESH_*`` (URL: ``TASKMESH_REDIS_URL``)."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def set_default_client(client: Client | None) -> None:
    """Make ``client`` the one ``Task.enqueue`` uses (None: build it from the environment again)."""
    global _default
    _default = client


__all__ = ["Client", "default_client", "set_default_client"]
