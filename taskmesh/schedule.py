"""Recurring jobs: a schedule (cron expression or fixed interval) and the tick times it produces.

Ticks are instants in epoch milliseconds. A cron expression is read in the schedule's time zone
(croniter's rules across DST changes: a local time skipped by a spring-forward fires at the first
valid instant after it, one repeated by a fall-back fires at both instants). An interval ticks at
``start + k * every`` (``start`` defaults to the Unix epoch, so ``every=60s`` ticks on the minute).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import MAX_DELAY_SECONDS
from .job import encode_payload, json_too_deep
from .names import check_name
from .store import CONNECTION_ERRORS, ScheduleLook
from .store.keys import QueueKeys

if TYPE_CHECKING:
    from .settings import Settings

Misfire = Literal["skip", "catch_up"]
Overlap = Literal["allow", "skip"]
#: Most missed ticks ``misfire="catch_up"`` runs after downtime, unless the schedule says otherwise.
CATCH_UP_MAX = 100
#: How late a tick may still run under ``misfire="skip"``, unless the schedule says otherwise.
MISFIRE_GRACE = 60.0
#: The most a schedule may ask for (each missed tick is a job created in one script call).
CATCH_UP_LIMIT = 1000
#: A ``cron`` script call: the queue whose state it works on, and its arguments after the stream's MAXLEN.
CronCall = tuple[str, list[Any]]
#: The highest revision of an entry (the scripts keep it in JSON with 14 significant digits).
MAX_REV = 10**14 - 1


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a task runs by itself, and with what arguments.

    Exactly one of ``cron`` (``"0 0 * * *"``; six fields: seconds last) and ``every`` (a timedelta or
    seconds, at least 1 s). ``misfire`` says what happens to ticks missed while no scheduler ran:
    ``"skip"`` runs the latest missed tick once if it is at most ``misfire_grace`` seconds old and
    otherwise waits for the next; ``"catch_up"`` runs every missed tick, oldest first, at most
    ``catch_up_max``. ``overlap="skip"`` skips a tick while the previous run of this schedule is
    still waiting or active.
    """

    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    misfire: Misfire = "skip"
    misfire_grace: float = MISFIRE_GRACE
    catch_up_max: int = CATCH_UP_MAX
    overlap: Overlap = "allow"

    def __post_init__(self) -> None:
        every = self.every
        if isinstance(every, timedelta):
            object.__setattr__(self, "every", every.total_seconds())
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of cron= and every=")
        if self.every is not None:
            number = isinstance(self.every, (int, float)) and not isinstance(self.every, bool)
            if not (number and math.isfinite(self.every) and 1 <= self.every <= MAX_DELAY_SECONDS):
                raise ValueError(f"every must be from 1 second to ten years, not {every!r}")
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"unknown time zone {self.tz!r} (use an IANA name such as 'Europe/Berlin')") from None
        if self.cron is not None:
            _check_cron(self.cron, zone)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.misfire not in ("skip", "catch_up"):
            raise ValueError(f"misfire must be 'skip' or 'catch_up', not {self.misfire!r}")
        if self.overlap not in ("allow", "skip"):
            raise ValueError(f"overlap must be 'allow' or 'skip', not {self.overlap!r}")
        grace = self.misfire_grace
        if isinstance(grace, bool) or not (isinstance(grace, (int, float)) and 0 <= grace <= MAX_DELAY_SECONDS):
            raise ValueError(f"misfire_grace must be >= 0 seconds, not {grace!r}")
        most = self.catch_up_max
        if isinstance(most, bool) or not (isinstance(most, int) and 1 <= most <= CATCH_UP_LIMIT):
            raise ValueError(f"catch_up_max must be an int from 1 to {CATCH_UP_LIMIT}, not {most!r}")
        if isinstance(self.args, (str, bytes)) or not isinstance(self.kwargs, Mapping):
            raise ValueError("args must be a sequence (not a string) and kwargs a mapping")
        self.payload("the scheduled run", sys.maxsize)

    def payload(self, task: str, limit: int) -> str:
        """The scheduled run's payload, checked as :func:`~taskmesh.job.encode_payload` checks an enqueued
        job's (a list or tuple, string keys, JSON, nested at most 100 deep, at most ``limit`` bytes);
        anything else is a ValueError (:class:`~taskmesh.errors.PayloadError` when too deep or too large)."""
        try:
            return encode_payload(task, self.args, self.kwargs, limit)
        except TypeError as exc:
            raise ValueError(f"{exc} (args and kwargs must be JSON)") from None

    @property
    def describe(self) -> str:
        when = f"cron {self.cron!r}" if self.cron is not None else f"every {self.every:g}s"
        return when if self.tz == "UTC" else f"{when} ({self.tz})"

    # -- ticks ---------------------------------------------------------------------

    def ticks_after(self, after_ms: int) -> Iterator[int]:
        """Tick times strictly after ``after_ms``, in order, within start/end."""
        start_ms = _ms(self.start) if self.start else None
        end_ms = _ms(self.end) if self.end else None
        if start_ms is not None and after_ms < start_ms - 1:
            after_ms = start_ms - 1
        if self.every is not None:
            step = round(self.every * 1000)
            origin = start_ms or 0
            tick = origin + (max(after_ms - origin, -1) // step + 1) * step
            while end_ms is None or tick <= end_ms:
                yield tick
                tick += step
            return
        assert self.cron is not None
        base = datetime.fromtimestamp(after_ms / 1000, ZoneInfo(self.tz))
        it = croniter(self.cron, base)
        while True:
            tick = _ms(it.get_next(datetime))
            if tick <= after_ms:
                continue
            if end_ms is not None and tick > end_ms:
                return
            yield tick

    def next_tick(self, after_ms: int) -> int | None:
        return next(self.ticks_after(after_ms), None)

    def due(self, last_ms: int, now_ms: int, limit: int) -> list[int]:
        """The most recent ``limit`` ticks in ``(last_ms, now_ms]``, oldest first (bounded work)."""
        if self.end is not None:
            now_ms = min(now_ms, _ms(self.end))
        floor = max(last_ms, _ms(self.start) - 1) if self.start else last_ms
        ticks: list[int] = []
        if self.every is not None:
            step = round(self.every * 1000)
            origin = _ms(self.start) if self.start else 0
            tick = origin + ((now_ms - origin) // step) * step
            while tick > floor and len(ticks) < limit:
                ticks.append(tick)
                tick -= step
        else:
            assert self.cron is not None
            it = croniter(self.cron, datetime.fromtimestamp((now_ms + 1) / 1000, ZoneInfo(self.tz)))
            while len(ticks) < limit:
                tick = _ms(it.get_prev(datetime))
                if tick <= floor:
                    break
                if tick <= now_ms:
                    ticks.append(tick)
        return ticks[::-1]

    # -- storage -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "cron": self.cron,
            "every": self.every,
            "tz": self.tz,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "misfire": self.misfire,
            "misfire_grace": self.misfire_grace,
            "catch_up_max": self.catch_up_max,
            "overlap": self.overlap,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}  # a newer version's fields are ignored
        for name in ("start", "end"):
            if values.get(name) is not None:
                if not isinstance(values[name], str):
                    raise ValueError(f"{name} must be an ISO 8601 string, not {type(values[name]).__name__}")
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """A schedule as stored in Redis: which task it enqueues, on which queue, and where it came from.

    ``version`` identifies what is stored (a digest of the stored JSON): the schedule's state in its
    queue is kept for one version, and restarts when a scheduler finds another stored. ``rev`` orders the
    versions (each change a client makes stores the next one, see :func:`revised`; 0: stored by hand or by
    an older taskmesh), so a scheduler that read an entry just before a change cannot take the state back
    to it.
    """

    name: str
    task: str
    queue: str
    schedule: Schedule
    priority: int = 0
    #: "code" (declared with @task and synced by workers) or "api" (added at run time).
    origin: str = "api"
    rev: int = field(default=0, compare=False)
    version: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        check_name("schedule name", self.name)
        check_name("task name", self.task)
        check_name("queue name", self.queue)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not -1000 <= self.priority <= 1000:
            raise ValueError(f"priority must be an int from -1000 to 1000, not {self.priority!r}")
        if not isinstance(self.schedule, Schedule) or not isinstance(self.origin, str):
            raise ValueError("schedule must be a Schedule and origin a string")
        if not _rev_ok(self.rev):
            raise ValueError(f"rev must be an int from 0 to {MAX_REV}, not {self.rev!r}")
        if not self.version:
            object.__setattr__(self, "version", version_of(self.to_json()))

    def to_json(self) -> str:
        data: dict[str, Any] = {"task": self.task, "queue": self.queue, "priority": self.priority}
        data.update(origin=self.origin, schedule=self.schedule.to_dict())
        if self.rev:  # an entry stored before revisions existed keeps its JSON, and so its version
            data["rev"] = self.rev
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, name: str, raw: str) -> ScheduleEntry:
        """The entry stored as ``raw``. Whatever ``raw`` holds (it comes from Redis: written by hand, by
        another version, or corrupt), what cannot be read is a ValueError saying why, and nothing else."""
        try:
            if json_too_deep(raw):
                raise ValueError("its JSON is nested too deep")
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"not JSON ({exc})") from None
            if not isinstance(data, dict) or not isinstance(data.get("schedule"), dict):
                raise ValueError("a JSON object with a 'schedule' object is expected")
            return cls(
                name=name,
                task=data["task"],
                queue=data["queue"],
                schedule=Schedule.from_dict(data["schedule"]),
                priority=data.get("priority", 0),
                origin=data.get("origin", "api"),
                rev=data.get("rev", 0),
                version=version_of(raw),
            )
        except Exception as exc:  # RecursionError and MemoryError included: one entry, one error
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise ValueError(_short(text)) from None


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule with its state: paused, the last tick handled and its job, the next tick it fires (None:
    none, or it is skipped)."""

    entry: ScheduleEntry
    paused: bool
    last_tick: datetime | None
    last_job: str | None
    next_tick: datetime | None
    #: Why the schedulers skip it, None if they fire it: its state cannot be read, or its arguments are
    #: over ``max_payload_bytes`` (as this client's settings have it; a worker with a higher one fires it).
    skipped: str | None = None
    #: False if its state cannot be read: ``paused`` and the ticks are unknown then.
    state_read: bool = True

    @property
    def status(self) -> str:
        """``unreadable`` (its state cannot be read), ``skipped`` (see ``skipped``), ``paused`` or ``active``."""
        if not self.state_read:
            return "unreadable"
        if self.skipped is not None:
            return "skipped"
        return "paused" if self.paused else "active"

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name,
            "task": e.task,
            "queue": e.queue,
            "when": e.schedule.describe,
            "origin": e.origin,
            "status": self.status,
            "skipped": self.skipped,
            "paused": self.paused,
            "last_tick": self.last_tick.isoformat() if self.last_tick else None,
            "last_job": self.last_job,
            "next_tick": self.next_tick.isoformat() if self.next_tick else None,
        }


def _random(fields: list[str]) -> bool:
    """croniter's ``R`` (a random value, drawn anew each time): no month or day name starts with R."""
    return any(item.strip().lower().startswith("r") for f in fields for item in f.split(","))


def _check_cron(expr: str, zone: ZoneInfo) -> None:
    """A standard five-field expression, or six with seconds last; one that can fire."""
    fields = expr.split() if isinstance(expr, str) else []
    if not 5 <= len(fields) <= 6 or not croniter.is_valid(expr) or _random(fields):
        raise ValueError(
            f"invalid cron expression {expr!r} (five fields, or six with seconds last; no random 'R' values)"
        )
    try:
        croniter(expr, datetime.now(zone)).get_next(datetime)
    except Exception:
        raise ValueError(f"cron expression {expr!r} never fires") from None


def schedule_info(settings: Settings, entry: ScheduleEntry, look: ScheduleLook | Exception) -> ScheduleInfo:
    """An entry with what its ``cron look`` returned (its state, None if not made yet; its queue's clock), or
    the error the look met (a schedule the schedulers skip, as one whose arguments are over the limit)."""
    if isinstance(look, CONNECTION_ERRORS):
        raise look
    if isinstance(look, Exception):
        return ScheduleInfo(entry, False, None, None, None, state_error(settings.prefix, entry, look), False)
    raw_state, now_ms = look.state, look.now_ms
    state = json.loads(raw_state) if raw_state else {}
    last, job = state.get("last"), state.get("job")
    try:
        entry.schedule.payload(entry.task, settings.max_payload_bytes)
        skipped = None
    except ValueError as exc:
        skipped = f"its arguments cannot be enqueued ({exc})"
    return ScheduleInfo(
        entry=entry,
        paused=bool(state.get("paused")),
        last_tick=from_ms(_tick_of(job)),
        last_job=job,
        next_tick=None if skipped else from_ms(entry.schedule.next_tick(max(last or now_ms, now_ms))),
        skipped=skipped,
    )


def version_of(raw: str) -> str:
    """The version of a stored entry: a digest of its JSON (what a client stores, a scheduler reads)."""
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def revised(entry: ScheduleEntry, old: str | None) -> ScheduleEntry:
    """``entry`` as it is to be stored over ``old`` (what is stored, if anything): with ``old``'s revision
    if it is the same entry (nothing changes), else with the next revision (a change)."""
    stored = rev_of(old)
    same = dataclasses.replace(entry, rev=stored, version="")
    if old is not None and same.to_json() == old:
        return same
    return dataclasses.replace(entry, rev=min(stored + 1, MAX_REV), version="")


def rev_of(raw: str | None) -> int:
    """The revision of a stored entry: 0 if it has none or it cannot be read."""
    try:
        data: Any = {} if raw is None or json_too_deep(raw) else json.loads(raw)
        rev = data.get("rev", 0)
    except Exception:  # whatever is stored
        return 0
    return rev if _rev_ok(rev) else 0


def _rev_ok(rev: Any) -> bool:
    return isinstance(rev, int) and not isinstance(rev, bool) and 0 <= rev <= MAX_REV


def read_entries(stored: Mapping[str, str | None]) -> tuple[list[ScheduleEntry], dict[str, str]]:
    """The entries of the stored schedules (``QueueStore.stored_schedules``) that can be read, in name order,
    and why each other cannot (name -> reason)."""
    entries: list[ScheduleEntry] = []
    unreadable: dict[str, str] = {}
    for name, raw in sorted(stored.items()):
        try:
            entries.append(read_entry(name, raw))
        except ValueError as exc:
            unreadable[name] = str(exc)
    return entries, unreadable


def read_entry(name: str, raw: str | None) -> ScheduleEntry:
    """One stored entry (None: it is not UTF-8); a ValueError says why it cannot be read."""
    if raw is None:
        raise ValueError("the stored entry is not UTF-8 text")
    return ScheduleEntry.from_json(name, raw)


def key_of(name: str) -> bytes:
    """The hash field of schedule ``name`` (a name that is not UTF-8 holds its bytes as surrogates)."""
    return name.encode("utf-8", "surrogateescape")


def queue_of(raw: str | None) -> str | None:
    """The queue of a stored entry: None if there is none, it cannot be read or it is not a valid queue
    name (no state can be kept for it then)."""
    if raw is None:
        return None
    try:
        data: Any = {} if json_too_deep(raw) else json.loads(raw)
        return check_name("queue name", data["queue"])
    except Exception:  # whatever is stored
        return None


def store_calls(entry: ScheduleEntry, old: str | None) -> tuple[list[CronCall], list[CronCall]]:
    """The ``cron`` script calls to make before and after storing ``entry`` over ``old`` (what is stored).

    Before: restart the state in its queue and announce the new version there (``change``: a changed
    schedule fires from its first tick after the change), or make the state of an unchanged entry if it
    is missing (``init``). After: drop the state in a queue it left. No tick of the old version fires
    under the new one, whichever of these calls fails (see ``cron.lua``).
    """
    name = entry.name
    if old == entry.to_json():
        return [(entry.queue, ["init", name, entry.version, entry.rev])], []
    old_queue = queue_of(old)
    after = [(old_queue, ["remove", name])] if old_queue is not None and old_queue != entry.queue else []
    return [(entry.queue, ["change", name, entry.version, entry.rev])], after


def state_error(prefix: str, entry: ScheduleEntry, error: Exception) -> str:
    """Why a ``cron look`` of ``entry`` failed (its queue's state key of another type, say)."""
    return f"its state in {QueueKeys.of(prefix, entry.queue).cron} cannot be read ({error})"


def _tick_of(job: Any) -> int | None:
    """The tick in a scheduled job's id ``<name>@<tick ms>`` (None if it is not one)."""
    tick = job.rpartition("@")[2] if isinstance(job, str) else ""
    return int(tick) if tick.isascii() and tick.isdigit() and len(tick) <= 13 else None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
