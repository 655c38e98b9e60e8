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

import redis.asyncio as aredis

from ..job import encode_payload
from ..registry import Registry
from ..schedule import ScheduleEntry
from ..settings import Settings
from ..store import scripts
from ..store.keys import QueueKeys, queues_key, schedules_key

log = logging.getLogger("taskmesh.scheduler")
#: The longest a scheduler sleeps before it looks at the schedules again (to see changes).
MAX_SLEEP = 1.0


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
            if stored.get(name) != entry.to_json():
                await self.conn.hset(key, name, entry.to_json())
                log.info("schedule %s: %s -> %s (queue %s)", name, entry.schedule.describe, entry.task, entry.queue)
            await self._cron(entry.queue, "init", name)
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
            except Exception as exc:  # Redis away, a bad entry: log, and look again soon
                log.warning("scheduler: %s", exc)
                delay = MAX_SLEEP
            await asyncio.sleep(delay)

    async def tick(self) -> float:
        """Fire what is due now; return the seconds until the next tick (at most MAX_SLEEP)."""
        loop = asyncio.get_running_loop()
        raw = await self.conn.hgetall(schedules_key(self.settings.prefix))
        seconds, micros = await self.conn.time()
        now_ms = seconds * 1000 + micros // 1000
        read_at = loop.time()
        soonest = now_ms + int(MAX_SLEEP * 1000)
        for name, value in sorted(raw.items()):
            try:
                entry = ScheduleEntry.from_json(str(name), str(value))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("schedule %s: cannot read its entry (%s); skipped", name, exc)
                continue
            last = await self._fire_due(entry, now_ms)
            following = entry.schedule.next_tick(max(last, now_ms))
            if following is not None:
                soonest = min(soonest, following)
        # Sleep until the next tick by Redis' clock, less the time this pass took.
        return max(0.0, (soonest - now_ms) / 1000 - (loop.time() - read_at))

    async def _fire_due(self, entry: ScheduleEntry, now_ms: int) -> int:
        """Fire the entry's due ticks; return its last handled tick."""
        keys = QueueKeys.of(self.settings.prefix, entry.queue)
        state_raw = await self.conn.hget(keys.cron, entry.name)
        if state_raw is None:
            await self._cron(entry.queue, "init", entry.name)
            return now_ms
        state: dict[str, Any] = json.loads(state_raw)
        last = int(state["last"])
        if state.get("paused"):
            return max(last, now_ms)
        schedule = entry.schedule
        fire: list[int] = []
        passed = 0
        if schedule.misfire == "catch_up":
            fire = schedule.due(last, now_ms, schedule.catch_up_max)
        else:
            latest = schedule.due(last, now_ms, 1)
            if latest and now_ms - latest[0] <= schedule.misfire_grace * 1000:
                fire = latest
            elif latest:
                passed = latest[0]
                log.warning("schedule %s: tick %d missed by more than misfire_grace; skipped", entry.name, passed)
        if not fire and not passed:
            return last
        payload = encode_payload(
            entry.task, list(schedule.args), dict(schedule.kwargs), self.settings.max_payload_bytes
        )
        args = [json.dumps(fire), passed]
        fired = await self._cron(
            entry.queue, "fire", entry.name, entry.task, payload, entry.priority, schedule.overlap, *args
        )
        self.fired += len(fired)
        return max([*fire, passed, last])

    async def _cron(self, queue: str, op: str, name: str, *args: Any) -> Any:
        keys = QueueKeys.of(self.settings.prefix, queue)
        return await scripts.acall(self.conn, "cron", keys.all, [self.settings.events_maxlen, op, name, *args])
