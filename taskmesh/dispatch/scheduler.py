"""The scheduler loop every worker runs: fire each schedule's due ticks, exactly once per tick.

There is no leader. Every scheduler reads the schedules, takes the time from Redis, and asks the
``cron`` script to fire the ticks that are due; the script fires a tick only if it is later than
the schedule's last handled tick and not in the future, so however many schedulers race for a tick,
one enqueues it and the others find it handled. The job id ``<name>@<tick ms>`` dedupes besides.
The local clock is never read for a tick: a worker whose clock is wrong fires neither early nor twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis
import redis.asyncio as aredis

from ..job import encode_payload
from ..registry import Registry
from ..schedule import ScheduleEntry, look_commands, moves
from ..settings import Settings
from ..store import scripts
from ..store.keys import QueueKeys, queues_key, schedules_key

log = logging.getLogger("taskmesh.scheduler")
#: The longest a scheduler sleeps before it looks at the schedules again (to see changes).
MAX_SLEEP = 1.0
#: A tick at most this old is on time, whatever ``misfire_grace`` says (a scheduler wakes a little late).
ON_TIME_MS = 2000


class Scheduler:
    def __init__(self, settings: Settings, conn: aredis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.fired = 0  # jobs this scheduler enqueued

    async def sync(self, registry: Registry, prune: bool = False) -> None:
        """Upsert the schedules tasks declare (origin "code"); report code schedules no task declares
        any more, and remove them only when ``prune`` is set."""
        key = schedules_key(self.settings.prefix)
        stored = {str(n): str(v) for n, v in (await self.conn.hgetall(key)).items()}
        declared: dict[str, ScheduleEntry] = {}
        for task in registry:
            if task.schedule is not None:
                entry = ScheduleEntry(task.name, task.name, task.queue, task.schedule, task.priority, origin="code")
                declared[entry.name] = entry
        for name, entry in declared.items():
            await self.conn.sadd(queues_key(self.settings.prefix), entry.queue)
            old = stored.get(name)
            changed = old != entry.to_json()
            if changed:
                await self.conn.hset(key, name, entry.to_json())
            for queue, args in moves(name, entry, old):
                await self._cron(queue, *args)
            if changed:
                log.info("schedule %s: %s -> %s (queue %s)", name, entry.schedule.describe, entry.task, entry.queue)
        for name, raw in stored.items():
            if name in declared:
                continue
            try:
                entry = ScheduleEntry.from_json(name, raw)
            except (ValueError, KeyError, TypeError):
                continue
            if entry.origin != "code":
                continue
            if prune:
                await self._cron(entry.queue, "remove", name)
                await self.conn.hdel(key, name)
                log.warning("schedule %s: no task declares it any more; removed (prune_schedules)", name)
            else:
                log.warning(
                    "schedule %s is stored but no task of this worker declares it; it still fires. Remove it "
                    "with `taskmesh schedules remove %s` or start a worker with --prune-schedules",
                    name,
                    name,
                )

    async def run(self) -> None:
        while True:
            try:
                delay = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: look again soon
                log.warning("scheduler: %s", exc)
                delay = MAX_SLEEP
            await asyncio.sleep(delay)

    async def tick(self) -> float:
        """Fire what is due now; return the seconds until the next tick (at most MAX_SLEEP).

        One schedule that cannot be read or fired is logged and skipped; the others go on.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        raw = await self.conn.hgetall(schedules_key(self.settings.prefix))
        entries: list[ScheduleEntry] = []
        for name, value in sorted(raw.items()):
            try:
                entries.append(ScheduleEntry.from_json(str(name), str(value)))
            except Exception as exc:
                log.error("schedule %s: %s; skipped in this pass", name, exc)
        # Every schedule's state and its queue's clock in one round trip.
        looks = await scripts.arun_pipeline(self.conn, look_commands(self.settings, entries)) if entries else []
        wait = MAX_SLEEP
        for entry, (state, now_ms) in zip(entries, looks, strict=True):
            try:
                wait = min(wait, await self._fire_due(entry, state, int(now_ms)))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                raise
            except Exception as exc:
                log.error("schedule %s: %s; skipped in this pass", entry.name, exc)
        # Sleep until the next tick by Redis' clock, less the time this pass took.
        return max(0.0, wait - (loop.time() - began))

    async def _fire_due(self, entry: ScheduleEntry, state_raw: str | None, now_ms: int) -> float:
        """Fire the entry's due ticks, given its state and its queue's clock as ``cron look`` read them;
        return the seconds until its next tick."""
        if state_raw is None:
            # No state: being added, moved or removed. Make it only if the entry is still stored.
            if await self.conn.hexists(schedules_key(self.settings.prefix), entry.name):
                await self._cron(entry.queue, "init", entry.name)
            return MAX_SLEEP
        state: dict[str, Any] = json.loads(state_raw)
        last = int(state["last"])
        schedule = entry.schedule
        if not state.get("paused"):
            last = await self._fire(entry, last, int(now_ms))
        following = schedule.next_tick(max(last, int(now_ms)))
        return MAX_SLEEP if following is None else (following - int(now_ms)) / 1000

    async def _fire(self, entry: ScheduleEntry, last: int, now_ms: int) -> int:
        """Fire the ticks due at ``now_ms`` (the queue's node's clock); return the last handled tick."""
        schedule = entry.schedule
        fire: list[int] = []
        passed = 0
        if schedule.misfire == "catch_up":
            fire = schedule.due(last, now_ms, schedule.catch_up_max)
        else:
            latest = schedule.due(last, now_ms, 1)
            if latest and now_ms - latest[0] <= max(schedule.misfire_grace * 1000, ON_TIME_MS):
                fire = latest
            elif latest:
                passed = latest[0]
                log.warning("schedule %s: tick %d missed by more than misfire_grace; skipped", entry.name, passed)
        if not fire and not passed:
            return last
        payload = encode_payload(
            entry.task, list(schedule.args), dict(schedule.kwargs), self.settings.max_payload_bytes
        )
        fired = await self._cron(
            entry.queue,
            "fire",
            entry.name,
            entry.task,
            payload,
            entry.priority,
            schedule.overlap,
            json.dumps(fire),
            passed,
        )
        self.fired += len(fired)
        return max([*fire, passed, last])

    async def _cron(self, queue: str, op: str, name: str, *args: Any) -> Any:
        keys = QueueKeys.of(self.settings.prefix, queue)
        return await scripts.acall(self.conn, "cron", keys.all, [self.settings.events_maxlen, op, name, *args])
