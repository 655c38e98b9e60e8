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

from ..registry import Registry
from ..schedule import ScheduleEntry, read_entries, read_entry, revised, state_error, store_calls
from ..settings import Settings
from ..store import CONNECTION_ERRORS, AsyncQueueStore

log = logging.getLogger("taskmesh.scheduler")
#: The longest a scheduler sleeps before it looks at the schedules again (to see changes).
MAX_SLEEP = 1.0
#: A tick at most this old is on time, whatever ``misfire_grace`` says (a scheduler wakes a little late).
ON_TIME_MS = 2000
#: A stored entry that can fire, with its scheduled run's payload.
Ready = tuple[ScheduleEntry, str]


class Scheduler:
    """Fires the stored schedules through ``store`` (a worker's: see the module docstring)."""

    def __init__(self, settings: Settings, store: AsyncQueueStore) -> None:
        self.settings = settings
        self.store = store
        self.fired = 0  # jobs this scheduler enqueued
        # name -> (entry read, the entry ready to fire or None): each stored version is checked once.
        self._read: dict[str, tuple[str | None, Ready | None]] = {}
        # Schedules whose last pass failed, with the version of the entry it failed under: a failure is
        # logged when it begins or the entry changes, not at every pass.
        self._failing: dict[str, str] = {}
        # name -> (version read, the newer version its state was found kept for): if the next pass reads
        # that version still, it was stored after the newer one, and the state is taken back to it.
        self._stale: dict[str, tuple[str, str]] = {}

    async def sync(self, registry: Registry, prune: bool = False) -> None:
        """Upsert the schedules tasks declare (origin "code"); report code schedules no task declares
        any more, and remove them only when ``prune`` is set. A declared schedule whose arguments this
        worker would refuse to enqueue (over ``max_payload_bytes``, say) is a ValueError."""
        stored = await self.store.stored_schedules()
        declared: dict[str, ScheduleEntry] = {}
        for task in registry:
            if task.schedule is not None:
                entry = ScheduleEntry(task.name, task.name, task.queue, task.schedule, task.priority, origin="code")
                task.schedule.payload(f"task {task.name}'s schedule", self.settings.max_payload_bytes)
                declared[entry.name] = entry
        for name, declared_entry in declared.items():
            await self.store.register_queue(declared_entry.queue)
            old = stored.get(name)
            entry = revised(declared_entry, old)
            before, after = store_calls(entry, old)
            for queue, args in before:
                await self._cron(queue, *args)
            if old != entry.to_json():
                await self.store.store_schedule(name, entry.to_json())
                log.info("schedule %s: %s -> %s (queue %s)", name, entry.schedule.describe, entry.task, entry.queue)
            for queue, args in after:
                await self._cron(queue, *args)
        others, _ = read_entries({name: raw for name, raw in stored.items() if name not in declared})
        for entry in others:
            if entry.origin != "code":
                continue
            if prune:
                await self._cron(entry.queue, "remove", entry.name)
                await self.store.delete_schedule(entry.name)
                log.warning("schedule %s: no task declares it any more; removed (prune_schedules)", entry.name)
            else:
                log.warning(
                    "schedule %s is stored but no task of this worker declares it; it still fires. Remove it "
                    "with `taskmesh schedules remove %s` or start a worker with --prune-schedules",
                    entry.name,
                    entry.name,
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

        A schedule that cannot be read or fired is logged (once, until that changes) and skipped; the
        others go on.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        ready = self._ready(await self.store.stored_schedules())
        # Every schedule's state (restarted if its entry changed) and its queue's clock in one round trip.
        # A look that fails (a state key of the wrong type, say) is that schedule's error, not the pass's.
        over = {e.name: stale[1] for e, _ in ready if (stale := self._stale.get(e.name)) and stale[0] == e.version}
        looks = await self.store.look_schedules([entry for entry, _ in ready], keep=True, over=over)
        wait = MAX_SLEEP
        for (entry, payload), look in zip(ready, looks, strict=True):
            try:
                if isinstance(look, CONNECTION_ERRORS):
                    raise look
                if isinstance(look, Exception):
                    raise RuntimeError(state_error(self.settings.prefix, entry, look))
                wait = min(wait, await self._fire_due(entry, payload, look.state, look.now_ms))
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:
                failing = self._failing.get(entry.name) == entry.version
                log.log(logging.DEBUG if failing else logging.ERROR, "schedule %s cannot fire: %s", entry.name, exc)
                self._failing[entry.name] = entry.version
            else:
                if self._failing.pop(entry.name, None) is not None:
                    log.info("schedule %s fires again", entry.name)
        # Sleep until the next tick by Redis' clock, less the time this pass took.
        return max(0.0, wait - (loop.time() - began))

    def _ready(self, stored: dict[str, str | None]) -> list[Ready]:
        """The stored entries that can fire, with their payloads, in name order. A new or changed entry
        is checked once: one that cannot be read, or whose arguments this worker would not enqueue, is
        logged then and skipped until it is stored again or removed."""
        read: dict[str, tuple[str | None, Ready | None]] = {}
        for name, raw in sorted(stored.items()):
            known = self._read.get(name)
            read[name] = known if known is not None and known[0] == raw else (raw, self._check(name, raw))
        self._read = read
        self._failing = {name: version for name, version in self._failing.items() if name in read}
        self._stale = {name: stale for name, stale in self._stale.items() if name in read}
        return [ready for _, ready in read.values() if ready is not None]

    def _check(self, name: str, raw: str | None) -> Ready | None:
        try:
            entry = read_entry(name, raw)
            return entry, entry.schedule.payload(entry.task, self.settings.max_payload_bytes)
        except ValueError as exc:
            log.warning(
                "schedule %r cannot fire: %s. Skipped until it is stored again; remove it with "
                "`taskmesh schedules remove NAME` (client.remove_schedule)",
                name,
                exc,
            )
            return None

    async def _fire_due(self, entry: ScheduleEntry, payload: str, state_raw: str | None, now_ms: int) -> float:
        """Fire the entry's due ticks, given its state and its queue's clock as ``cron look`` read them;
        return the seconds until its next tick."""
        if state_raw is None:
            # No state: being added, moved or removed. Make it only if the entry is still stored.
            if await self.store.has_schedule(entry.name):
                await self._cron(entry.queue, "init", entry.name, entry.version, entry.rev)
            return MAX_SLEEP
        state: dict[str, Any] = json.loads(state_raw)
        if state.get("v") != entry.version:
            # Kept for a newer version: this pass read the entry just before it changed, or an older one
            # was stored after it (then the next pass takes the state back to it, see cron.lua).
            newer = str(state.get("v"))
            log.debug("schedule %s: its state is kept for version %s, newer than %s", entry.name, newer, entry.version)
            self._stale[entry.name] = (entry.version, newer)
            return MAX_SLEEP
        self._stale.pop(entry.name, None)
        last = int(state["last"])
        schedule = entry.schedule
        if not state.get("paused"):
            last = await self._fire(entry, payload, last, int(now_ms))
        following = schedule.next_tick(max(last, int(now_ms)))
        return MAX_SLEEP if following is None else (following - int(now_ms)) / 1000

    async def _fire(self, entry: ScheduleEntry, payload: str, last: int, now_ms: int) -> int:
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
        fired = await self.store.fire_schedule(
            entry.queue,
            entry.name,
            entry.version,
            entry.task,
            payload,
            entry.priority,
            schedule.overlap,
            json.dumps(fire),
            passed,
            entry.rev,
        )
        self.fired += len(fired)
        return max([*fire, passed, last])

    async def _cron(self, queue: str, op: str, name: str, *args: Any) -> None:
        await self.store.cron(queue, op, name, *args)
