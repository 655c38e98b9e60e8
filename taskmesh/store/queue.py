"""The gateway to Redis: every command taskmesh's sync code sends goes through one of these methods.

The twin of :mod:`taskmesh.store.aqueue` (same methods, same order; only ``await`` differs). Arguments are
built and replies parsed in :mod:`taskmesh.store.base`; errors are redis-py's (see ``base``), so a caller
chooses what to retry and what to report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..limits import QueueSettings
from ..names import check_job_id
from ..settings import Settings
from . import connect, scripts
from .base import (
    UNDECODED,
    EventEntry,
    JobValues,
    ScheduleLook,
    Stepped,
    StoreBase,
    SyncRedis,
    Versioned,
    decode_stored,
)
from .scripts import Update


class QueueStore(StoreBase):
    """A taskmesh installation's Redis (``settings.redis_url``, ``settings.prefix``); thread-safe.

    ``direct`` sends script calls through :class:`~taskmesh.store.connect.Direct` connections, past
    redis-py's per-command layers (a producer's ``enqueue``: about 20 µs a call); without it they go on the
    redis-py client.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        known: set[str] | None = None,
        options: Mapping[str, Any] | None = None,
        direct: bool = True,
    ) -> None:
        super().__init__(settings, known=known, options=options)
        self._use_direct = direct
        self._redis: SyncRedis | None = None
        self._direct: connect.Direct | SyncRedis | None = None

    # -- connections -------------------------------------------------------------

    @property
    def redis(self) -> SyncRedis:
        """The redis-py client (made at first use)."""
        if self._redis is None:
            self._redis = connect.sync_client(self.settings.redis_url, **self._options)
        return self._redis

    @property
    def direct(self) -> connect.Direct | SyncRedis:
        """The direct connections script calls go through (on a cluster, the client itself)."""
        if self._direct is None:
            self._direct = connect.direct(self.redis)
        return self._direct

    @property
    def _scripts(self) -> connect.Direct | SyncRedis:
        return self.direct if self._use_direct else self.redis

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def ping(self) -> None:
        """One PING (bounded by the connection timeouts): raises if Redis cannot be reached."""
        self.redis.ping()

    # -- queues ------------------------------------------------------------------

    def register_queue(self, queue: str) -> None:
        """Add ``queue`` (its name checked first) to the prefix's set of queues, once per store."""
        if queue not in self.known:
            self.keys(queue)
            self.redis.sadd(self._queues_key(), queue)
            self.known.add(queue)

    def queues(self) -> list[str]:
        """The queue names producers and workers registered under the prefix, sorted."""
        return sorted(str(queue) for queue in self.redis.smembers(self._queues_key()))

    def workers(self) -> list[str]:
        """Ids of the workers whose heartbeat is current."""
        return [str(w) for w in self.redis.zrangebyscore(self._workers_key(), time.time() * 1000, "+inf")]

    def counts(self, queue: str) -> dict[str, int]:
        """The number of jobs in each state."""
        keys = self.keys(queue)
        with self.redis.pipeline(transaction=False) as pipe:
            for key in (keys.waiting, keys.delayed, keys.active, keys.completed, keys.failed, keys.cancelled):
                pipe.zcard(key)
            return self._counts(pipe.execute())

    def queue_settings(self, queue: str) -> QueueSettings:
        """Whether ``queue`` is paused, and its limits (read as bytes: one that is not UTF-8 is reported)."""
        command: Any = self.redis.execute_command  # untyped in redis-py
        return self._settings_of(command("HGETALL", self.keys(queue).meta, **UNDECODED))

    def pause(self, queue: str) -> None:
        """Workers stop leasing from ``queue`` (the ``control`` script)."""
        self.register_queue(queue)
        scripts.call(self._scripts, "control", self.keys(queue).all, self._control_args("pause"))

    def resume(self, queue: str) -> None:
        self.register_queue(queue)
        scripts.call(self._scripts, "control", self.keys(queue).all, self._control_args("resume"))

    def set_limit(self, queue: str, task: str | bytes, limit: str) -> None:
        """Set the limit of ``queue`` (``task`` empty) or of one task's jobs in it: ``Limit.to_json()``,
        empty to remove it."""
        self.register_queue(queue)
        scripts.call(self._scripts, "control", self.keys(queue).all, self._control_args("limit", task, limit))

    def check_access(self, queue: str) -> list[str] | None:
        """The commands the scripts use that this Redis user may not run on the queue's keys (``COMMAND key``);
        None where Redis cannot tell (before 7.0)."""
        denied = scripts.call(self._scripts, "access", self.keys(queue).all, [self.settings.events_maxlen])
        return None if denied is None else [str(item) for item in denied]

    # -- jobs --------------------------------------------------------------------

    def enqueue(self, queue: str, job: JobValues) -> bool:
        """Add one job; False if a job with its id exists (it is left as it is)."""
        keys = self.keys(queue).enqueue
        self.register_queue(queue)
        result = scripts.call(self._scripts, "enqueue", keys, self._enqueue_args(job))
        return bool(result[0] == 1)

    def enqueue_many(self, batches: Mapping[str, Sequence[Any]]) -> list[list[tuple[bool, str]]]:
        """Add jobs to several queues in one round trip (one script call per queue): ``batches`` holds each
        queue's job values, six per job. Per queue, per job: (created, state)."""
        commands, new = self._enqueue_commands(batches)
        results = scripts.run_pipeline(self.redis, commands)
        self.known |= new
        return self._enqueued(results[len(results) - len(batches) :])

    def job_record(self, queue: str, job_id: str) -> str | None:
        """The job's record (JSON), None if there is none."""
        raw = self.redis.hget(self.keys(queue).jobs, job_id)
        return None if raw is None else str(raw)

    def has_job(self, queue: str, job_id: str) -> bool:
        return bool(self.redis.hexists(self.keys(queue).jobs, job_id))

    def payload(self, queue: str, job_id: str) -> str | None:
        """The job's payload (its task and arguments, JSON), None if there is none."""
        raw = self.redis.hget(self.keys(queue).payloads, job_id)
        return None if raw is None else str(raw)

    def job_ids(self, queue: str, state: str) -> list[str]:
        """The ids of the queue's jobs in ``state``, in the order of its set."""
        return [str(job_id) for job_id in self.redis.zrange(getattr(self.keys(queue), state), 0, -1)]

    def cancel(self, queue: str, job_id: str) -> str:
        """Cancel a job: ``cancelled``, ``cancelling`` (it runs: its worker stops it), the final state it
        had already reached, or ``missing``."""
        args = scripts.cancel_args(self.settings, check_job_id(job_id))
        return str(scripts.call(self._scripts, "cancel", self.keys(queue).all, args))

    def step(self, queue: str, worker: str, want: int, updates: list[Update]) -> Stepped:
        """Apply ``updates`` (fenced by their tokens), then lease up to ``want`` jobs for ``worker``."""
        args = scripts.step_args(self.settings, worker, want, updates)
        return self._stepped(scripts.call(self._scripts, "step", self.keys(queue).all, args))

    def renew(self, queue: str, held: Sequence[tuple[str, int]]) -> tuple[list[str], list[str]]:
        """Extend the leases ``held`` (job id, token): (ids whose lease is another holder's, held ids whose
        cancellation was requested)."""
        args = scripts.renew_args(self.settings, list(held))
        return scripts.parse_renew(scripts.call(self._scripts, "renew", self.keys(queue).all, args))

    def sweep(self, queue: str, limit: int = 500) -> tuple[list[str], list[str]]:
        """Recover stalled jobs: (ids back to waiting, ids failed as lost)."""
        args = scripts.sweep_args(self.settings, limit)
        recovered, lost = scripts.call(self._scripts, "sweep", self.keys(queue).all, args)
        return [str(job_id) for job_id in recovered], [str(job_id) for job_id in lost]

    # -- schedules ---------------------------------------------------------------

    def stored_schedules(self) -> dict[str, str | None]:
        """Every stored schedule entry: name -> JSON, None where it is not UTF-8 (see ``decode_stored``)."""
        command: Any = self.redis.execute_command
        return decode_stored(command("HGETALL", self._schedules_key(), **UNDECODED))

    def stored_schedule(self, name: str) -> str | None:
        """The stored entry of schedule ``name`` (JSON), None if there is none."""
        raw = self.redis.hget(self._schedules_key(), name)
        return None if raw is None else str(raw)

    def stored_schedule_bytes(self, field: bytes) -> bytes | None:
        """The stored entry under the hash field ``field`` as bytes (any name, a garbage one too)."""
        command: Any = self.redis.execute_command
        raw = command("HGET", self._schedules_key(), field, **UNDECODED)
        return None if raw is None else bytes(raw)

    def has_schedule(self, name: str) -> bool:
        return bool(self.redis.hexists(self._schedules_key(), name))

    def store_schedule(self, name: str, entry: str) -> None:
        """Store a schedule's entry (its JSON) under ``name``."""
        self.redis.hset(self._schedules_key(), name, entry)

    def delete_schedule(self, field: str | bytes) -> None:
        self.redis.hdel(self._schedules_key(), field)

    def cron(self, queue: str, op: str, name: str, *args: Any) -> None:
        """A ``cron`` script call that changes a schedule's state in ``queue``: ``init``, ``change``,
        ``pause``, ``resume`` or ``remove`` (see ``lua/cron.lua``)."""
        scripts.call(self._scripts, "cron", self.keys(queue).all, self._control_args(op, name, *args))

    def fire_schedule(self, queue: str, name: str, *args: Any) -> list[str]:
        """``cron fire``: enqueue the schedule's due ticks (version, task, payload, priority, overlap, ticks
        JSON, a tick to pass over, revision); the ids of the jobs enqueued."""
        values = self._control_args("fire", name, *args)
        fired = scripts.call(self._scripts, "cron", self.keys(queue).all, values)
        return [str(job_id) for job_id in fired]

    def look_schedules(
        self, entries: Sequence[Versioned], *, keep: bool = False, over: Mapping[str, str] | None = None
    ) -> list[ScheduleLook | Exception]:
        """One ``cron look`` per entry in one round trip: its state and its queue's clock, or the error that
        schedule's look met (see ``StoreBase._looks``)."""
        if not entries:
            return []
        results = scripts.run_pipeline_each(self.redis, self._look_commands(entries, keep, over))
        return self._looks(results)

    # -- events ------------------------------------------------------------------

    def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The id of the latest event of each queue (``0-0`` for none), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.xrevrange(self.keys(queue).events, count=1)
            found = pipe.execute()
        return {queue: self._last_id(last) for queue, last in zip(queues, found, strict=True)}

    def read_events(self, cursors: Mapping[str, str], count: int, block: int | None) -> list[EventEntry]:
        """Events after each queue's cursor (an event id), waiting up to ``block`` ms for one (None: not)."""
        found = connect.xread(self.redis, self._streams(cursors), count=count, block=block)
        return self._entries(found)

    # -- attempts that leave their outcome (the Kubernetes runner's pods) --------

    def leave_outcome(self, key: str, outcome: str, ttl: int) -> None:
        """Leave an attempt's outcome (JSON) under ``key`` for ``ttl`` seconds."""
        self.redis.set(key, outcome, ex=ttl)

    def outcome(self, key: str) -> str | None:
        raw = self.redis.get(key)
        return None if raw is None else str(raw)

    def drop_outcome(self, key: str) -> None:
        self.redis.delete(key)

    # -- housekeeping ------------------------------------------------------------

    def purge(self) -> None:
        """Delete every key under the prefix (SCAN and DEL; for tests and tear-downs)."""
        conn = connect.sync_client(self.settings.redis_url, decode_responses=False)
        try:
            for pattern in self._prefix_patterns():
                found = list(conn.scan_iter(match=pattern, count=1000))
                if found:
                    conn.delete(*found)
        finally:
            conn.close()
