"""Schedules: declaring, tick times (time zones, DST), the cron script's exactly-once firing, misfire and
overlap policies, and managing schedules at run time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

import pytest

from taskmesh import Client, Job, JobState, Schedule, task
from taskmesh.dispatch.scheduler import Scheduler
from taskmesh.schedule import ScheduleEntry, version_of
from taskmesh.store import AsyncQueueStore, scripts
from taskmesh.store.keys import schedules_key
from taskmesh.testing import RunningWorker, wait_until

T = TypeVar("T")
StartWorker = Callable[..., RunningWorker]
BERLIN = "Europe/Berlin"
pytestmark = pytest.mark.also_cluster


def ms(text: str, tz: str = "UTC") -> int:
    return round(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def iso(tick: int, tz: str = BERLIN) -> str:
    return datetime.fromtimestamp(tick / 1000, ZoneInfo(tz)).isoformat()


# -- declaring ---------------------------------------------------------------------------


def test_a_bad_cron_expression_fails_at_decoration_naming_task_and_expression() -> None:
    with pytest.raises(ValueError, match=r"task sched\.bad: invalid cron expression '61 \* \* \* \*'"):
        task(name="sched.bad", cron="61 * * * *")(lambda: None)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        task(name="sched.tz", cron="0 0 * * *", tz="Mars/Olympus")(lambda: None)
    with pytest.raises(ValueError, match="exactly one of cron= and every="):
        Schedule(cron="0 0 * * *", every=60)
    with pytest.raises(ValueError, match="from 1 second to ten years"):
        Schedule(every=0.5)
    with pytest.raises(ValueError, match="from 1 second to ten years"):
        Schedule(every=1e306)
    with pytest.raises(ValueError, match="never fires"):
        Schedule(cron="0 0 31 2 *")
    for random_or_year in ("R R * * *", "0 0 1 1 * 0 2031"):
        with pytest.raises(ValueError, match="invalid cron expression"):
            Schedule(cron=random_or_year)
    assert Schedule(cron="0 8 1 mar,apr fri").cron == "0 8 1 mar,apr fri"
    with pytest.raises(ValueError, match="catch_up_max"):
        Schedule(every=60, catch_up_max=100_000)
    with pytest.raises(ValueError, match="args must be a sequence"):
        Schedule(every=60, args="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tz= needs"):
        task(name="sched.tzonly", tz="UTC")(lambda: None)
    with pytest.raises(ValueError, match="JSON"):
        Schedule(every=60, args=(object(),))


def test_task_options_make_a_schedule() -> None:
    nightly = task(name="sched.nightly", cron="0 2 * * *", tz=BERLIN)(lambda: None)
    often = task(name="sched.often", every=timedelta(minutes=5))(lambda: None)
    assert nightly.schedule == Schedule(cron="0 2 * * *", tz=BERLIN)
    assert often.schedule is not None and often.schedule.every == 300.0


# -- ticks -------------------------------------------------------------------------------------


def test_intervals_tick_on_multiples_of_every_from_start() -> None:
    assert Schedule(every=60).due(ms("2026-01-01T00:00:30") - 200_000, ms("2026-01-01T00:00:30"), 3) == [
        ms("2026-01-01T00:00:00") - 120_000,
        ms("2026-01-01T00:00:00") - 60_000,
        ms("2026-01-01T00:00:00"),
    ]
    started = Schedule(every=10, start=datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC))
    assert started.next_tick(ms("2026-01-01T00:00:00")) == ms("2026-01-01T00:00:03")
    assert started.next_tick(ms("2026-01-01T00:00:03")) == ms("2026-01-01T00:00:13")
    ended = Schedule(every=10, end=datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC))
    assert ended.next_tick(ms("2026-01-01T00:00:20")) is None
    assert ended.due(0, ms("2026-01-01T00:05:00"), 1) == [ms("2026-01-01T00:00:20")]


def test_cron_in_a_time_zone_follows_croniters_dst_rules() -> None:
    daily = Schedule(cron="30 2 * * *", tz=BERLIN)
    # Spring forward (2026-03-29, 02:00 -> 03:00): the skipped 02:30 fires at 03:00 local.
    spring = list(_take(daily.ticks_after(ms("2026-03-28T12:00:00", BERLIN)), 3))
    assert [iso(t) for t in spring] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice, and fires at both instants.
    autumn = list(_take(daily.ticks_after(ms("2026-10-24T12:00:00", BERLIN)), 3))
    assert [iso(t) for t in autumn] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # Read backwards (as a scheduler does after downtime) the same instants come out.
    assert daily.due(ms("2026-10-24T12:00:00", BERLIN), ms("2026-10-26T12:00:00", BERLIN), 10) == autumn
    assert Schedule(cron="0 0 * * *").next_tick(ms("2026-05-01T10:00:00")) == ms("2026-05-02T00:00:00")


def _take(it: Any, n: int) -> Any:
    for _ in range(n):
        yield next(it)


# -- the cron script ---------------------------------------------------------------------------


def fire(client: Client, name: str, ticks: list[int], passed: int = 0, overlap: str = "allow") -> list[str]:
    """A scheduler's fire call for the stored version of schedule ``name``."""
    keys = client.keys("default").all
    version = version_of(cast(str, client.redis.hget(schedules_key(client.settings.prefix), name)))
    args = [client.settings.events_maxlen, "fire", name, version, "sched.job", '{"t":"sched.job","a":[],"k":{}}']
    return cast(list[str], scripts.call(client.redis, "cron", keys, [*args, 0, overlap, json.dumps(ticks), passed]))


def set_last(client: Client, name: str, last: int) -> None:
    """Backdate a schedule's state: its last handled tick (the rest of the state kept)."""
    key = client.keys("default").cron
    raw = client.redis.hget(key, name)
    client.redis.hset(key, name, json.dumps({**(json.loads(cast(str, raw)) if raw else {}), "last": last}))


def cron_state(client: Client, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(cast(str, client.redis.hget(client.keys("default").cron, name))))


def stream(client: Client, event: str) -> list[dict[str, str]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys("default").events))
    return [fields for _, fields in entries if fields["event"] == event]


def server_ms(client: Client) -> int:
    seconds, micros = cast(tuple[int, int], client.redis.time())
    return seconds * 1000 + micros // 1000


def test_each_tick_fires_once_and_never_before_its_time(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("s", "sched.job", every=1)
    now = server_ms(taskmesh_client)
    first, second = now - 1000, now - 500
    assert fire(taskmesh_client, "s", [now + 60_000]) == [], "a tick in the future is refused"
    assert fire(taskmesh_client, "s", [first]) == [], "a tick from before the schedule existed is not run"
    set_last(taskmesh_client, "s", now - 2000)

    assert fire(taskmesh_client, "s", [first, second]) == [f"s@{first}", f"s@{second}"]
    assert fire(taskmesh_client, "s", [first, second]) == [], "a second scheduler finds both handled"
    status = taskmesh_client.status(f"s@{second}")
    assert status is not None and status.state is JobState.WAITING and status.task == "sched.job"
    entries = cast(
        list[tuple[str, dict[str, str]]], taskmesh_client.redis.xrange(taskmesh_client.keys("default").events)
    )
    enqueued = [f for _, f in entries if f["event"] == "enqueued"]
    assert enqueued == [
        {"event": "enqueued", "job": f"s@{first}", "schedule": "s", "tick": str(first)},
        {"event": "enqueued", "job": f"s@{second}", "schedule": "s", "tick": str(second)},
    ]
    assert cron_state(taskmesh_client, "s")["last"] == second


def test_a_tick_half_a_second_ahead_of_the_servers_clock_is_neither_fired_nor_passed_over(
    taskmesh_client: Client,
) -> None:
    taskmesh_client.schedule("f", "sched.job", every=1)
    now = server_ms(taskmesh_client)
    set_last(taskmesh_client, "f", now - 5000)
    # 500 ms ahead of the clock read just before (these calls take a few ms): not due by the script's clock.
    # A check that let a tick through up to a second early would fire it, or move `last` past it.
    ahead = now + 500
    assert fire(taskmesh_client, "f", [ahead]) == [], "a tick ahead of the server's clock is refused"
    assert fire(taskmesh_client, "f", [], passed=ahead) == [], "passing over a tick fires nothing"
    assert cron_state(taskmesh_client, "f")["last"] == now - 5000, "a tick ahead is neither fired nor passed over"
    assert taskmesh_client.status(f"f@{ahead}") is None
    assert fire(taskmesh_client, "f", [], passed=now - 2000) == []
    assert cron_state(taskmesh_client, "f")["last"] == now - 2000, "a tick due is passed over"
    assert fire(taskmesh_client, "f", [now - 1, now]) == [f"f@{now - 1}", f"f@{now}"], "ticks due by now fire"
    assert cron_state(taskmesh_client, "f")["last"] == now


def test_overlap_skip_passes_a_tick_while_the_previous_run_is_unfinished(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("o", "sched.job", every=1, overlap="skip")
    now = server_ms(taskmesh_client)
    set_last(taskmesh_client, "o", now - 5000)
    assert fire(taskmesh_client, "o", [now - 3000], overlap="skip") == [f"o@{now - 3000}"]
    # A second scheduler offering the same tick finds it handled: it is not decided again (skipped as busy).
    assert fire(taskmesh_client, "o", [now - 3000], overlap="skip") == []
    assert stream(taskmesh_client, "tick_skipped") == [], "a tick offered again is not decided again"
    assert fire(taskmesh_client, "o", [now - 2000], overlap="skip") == [], "the previous run is still waiting"
    taskmesh_client.cancel(f"o@{now - 3000}")
    assert fire(taskmesh_client, "o", [now - 1000], overlap="skip") == [f"o@{now - 1000}"]
    entries = cast(
        list[tuple[str, dict[str, str]]], taskmesh_client.redis.xrange(taskmesh_client.keys("default").events)
    )
    skipped = [f for _, f in entries if f["event"] == "tick_skipped"]
    assert skipped == [
        {"event": "tick_skipped", "job": "", "schedule": "o", "tick": str(now - 2000), "reason": "overlap"}
    ]


def test_a_paused_schedule_passes_its_ticks_and_resumes_from_now(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("p", "sched.job", every=1)
    now = server_ms(taskmesh_client)
    set_last(taskmesh_client, "p", now - 5000)
    assert taskmesh_client.pause_schedule("p")
    assert fire(taskmesh_client, "p", [now - 1000]) == []
    assert taskmesh_client.resume_schedule("p")
    assert cron_state(taskmesh_client, "p")["last"] >= now
    assert not taskmesh_client.pause_schedule("nope")


# -- the scheduler loop ------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def scheduler_pass(
    client: Client, backdate_ms: int | None = None, name: str = "m", align_ms: int = 1
) -> tuple[int, float]:
    """One scheduler pass, after setting the schedule's last tick ``backdate_ms`` before now
    (rounded down to a multiple of ``align_ms``: a whole number of ticks ago)."""
    conn = AsyncQueueStore(client.settings)
    try:
        if backdate_ms is not None:
            seconds, micros = await conn.redis.time()
            now = seconds * 1000 + micros // 1000
            set_last(client, name, now - now % align_ms - backdate_ms)
        scheduler = Scheduler(client.settings, conn)
        delay = await scheduler.tick()
        return scheduler.fired, delay
    finally:
        await conn.aclose()


def test_misfire_skip_runs_the_latest_missed_tick_once_within_the_grace(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("m", "sched.job", every=10, misfire_grace=30)
    fired, delay = run(scheduler_pass(taskmesh_client, backdate_ms=600_000))
    assert fired == 1 and 0 <= delay <= 1.0
    assert run(scheduler_pass(taskmesh_client))[0] == 0, "the same tick is not fired again"


def test_misfire_skip_beyond_the_grace_waits_for_the_next_tick(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("m", "sched.job", cron="0 0 1 1 *", misfire_grace=60)
    fired, _ = run(scheduler_pass(taskmesh_client, backdate_ms=400 * 86_400_000))
    assert fired == 0 and taskmesh_client.counts()["waiting"] == 0
    assert cron_state(taskmesh_client, "m")["last"] > server_ms(taskmesh_client) - 366 * 86_400_000


def test_misfire_catch_up_runs_every_missed_tick_up_to_its_maximum(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("m", "sched.job", every=60, misfire="catch_up", catch_up_max=5)
    fired, _ = run(scheduler_pass(taskmesh_client, backdate_ms=3 * 60_000, align_ms=60_000))
    assert fired == 3
    taskmesh_client.schedule("m2", "sched.job", every=60, misfire="catch_up", catch_up_max=5)
    fired, _ = run(scheduler_pass(taskmesh_client, backdate_ms=3_600_000, name="m2", align_ms=60_000))
    assert fired == 5, "at most catch_up_max"
    assert taskmesh_client.counts()["waiting"] == 8


# -- run-time management and the worker ----------------------------------------------------------


def test_schedules_are_added_changed_paused_and_removed_at_run_time(taskmesh_client: Client) -> None:
    added = datetime.fromtimestamp(server_ms(taskmesh_client) / 1000, UTC)
    taskmesh_client.schedule("report", "sched.job", cron="0 6 * * *", tz=BERLIN, args=[1])
    [info] = taskmesh_client.schedules()
    listed = datetime.fromtimestamp(server_ms(taskmesh_client) / 1000, UTC)
    assert (info.entry.name, info.entry.task, info.entry.queue, info.paused) == (
        "report",
        "sched.job",
        "default",
        False,
    )
    # The first 06:00 in Berlin after the schedule was added (or after the listing, if 06:00 passed between).
    assert info.next_tick is not None
    local = info.next_tick.astimezone(ZoneInfo(BERLIN))
    assert local.time() == time(6, 0), local
    assert added < info.next_tick and local - timedelta(days=1) <= listed, (added, local)
    assert info.entry.schedule.describe == "cron '0 6 * * *' (Europe/Berlin)"

    taskmesh_client.schedule("report", "sched.job", every=30, queue="other")
    [info] = taskmesh_client.schedules()
    assert (info.entry.queue, info.entry.schedule.every) == ("other", 30.0)
    assert taskmesh_client.redis.hget(taskmesh_client.keys("default").cron, "report") is None, "old state moved"
    taskmesh_client.pause_schedule("report")
    assert taskmesh_client.schedules()[0].paused
    assert taskmesh_client.remove_schedule("report")
    assert taskmesh_client.schedules() == []
    assert not taskmesh_client.remove_schedule("report")
    with pytest.raises(TypeError):
        taskmesh_client.schedule("x", "sched.job", Schedule(every=5), every=5)


ran: list[str] = []


@task(name="sched.every_second", every=1)
def every_second(job: Job) -> str:
    ran.append(job.id)
    return job.id


def test_a_worker_syncs_declared_schedules_and_fires_them(
    taskmesh_client: Client, taskmesh_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    taskmesh_client.redis.hset(
        f"{{{taskmesh_client.settings.prefix}}}:schedules",
        "old.code",
        ScheduleEntry("old.code", "sched.gone", "default", Schedule(every=60), origin="code").to_json(),
    )
    ran.clear()
    taskmesh_worker([every_second])
    wait_until(lambda: len(ran) >= 2, timeout=5, message="two scheduled runs")
    names = [info.entry.name for info in taskmesh_client.schedules()]
    assert names == ["old.code", "sched.every_second"], "a schedule gone from code stays until asked"
    assert "schedule old.code is stored but no task of this worker declares it" in caplog.text
    first, second = sorted(ran)[:2]
    assert int(second.split("@")[1]) - int(first.split("@")[1]) == 1000
    status = taskmesh_client.status(first)
    assert status is not None and status.state is JobState.COMPLETED
    assert (status.schedule, status.tick) == (
        "sched.every_second",
        datetime.fromtimestamp(int(first[-13:]) / 1000, UTC),
    )


got: list[tuple[str, int]] = []


@task(name="sched.greet")
def greet(name: str, times: int = 1) -> str:
    got.append((name, times))
    return name * times


def test_a_schedule_added_at_run_time_runs_its_task_with_its_arguments(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    got.clear()
    taskmesh_worker([greet])
    taskmesh_client.schedule("greeter", greet, every=1, args=["ab"], kwargs={"times": 2})
    finished: list[Any] = []

    def last_run_finished() -> bool:
        [info] = taskmesh_client.schedules()
        status = taskmesh_client.status(info.last_job) if info.last_job else None
        finished[:] = [info, status]
        return status is not None and status.state is JobState.COMPLETED

    wait_until(last_run_finished, timeout=5, message="a scheduled run finished")
    info, status = finished
    assert got[0] == ("ab", 2)
    assert info.last_job.startswith("greeter@") and status.result == "abab"


def test_async_twins_manage_schedules(taskmesh_client: Client) -> None:
    async def main() -> None:
        entry = await taskmesh_client.aschedule("a", "sched.job", every=60, queue="q1")
        assert (entry.name, entry.queue) == ("a", "q1")
        assert [i.entry.name for i in await taskmesh_client.aschedules()] == ["a"]
        assert await taskmesh_client.apause_schedule("a")
        assert (await taskmesh_client.aschedules())[0].paused
        assert await taskmesh_client.aresume_schedule("a")
        assert await taskmesh_client.aremove_schedule("a")
        assert await taskmesh_client.aschedules() == []
        await taskmesh_client.aclose()

    run(main())


def test_prune_removes_code_schedules_no_task_declares_and_keeps_run_time_ones(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    key = f"{{{taskmesh_client.settings.prefix}}}:schedules"
    stale = ScheduleEntry("gone.from.code", "sched.gone", "default", Schedule(every=60), origin="code")
    taskmesh_client.redis.hset(key, stale.name, stale.to_json())
    taskmesh_client.schedule("added.at.run.time", "sched.job", every=60)
    taskmesh_worker([every_second], prune_schedules=True)
    names = [info.entry.name for info in taskmesh_client.schedules()]
    assert names == ["added.at.run.time", "sched.every_second"]


# -- review regressions ----------------------------------------------------------------------


def test_one_unreadable_schedule_stops_none_of_the_others(taskmesh_client: Client) -> None:
    key = f"{{{taskmesh_client.settings.prefix}}}:schedules"
    taskmesh_client.schedule("b.good", "sched.job", every=1, misfire_grace=3600)
    taskmesh_client.redis.hset(key, "a.bad", '{"task": "sched.job", "queue": "default", "schedule": {"every": -1}}')
    taskmesh_client.schedule("a.corrupt.state", "sched.job", every=1)
    taskmesh_client.redis.hset(taskmesh_client.keys("default").cron, "a.corrupt.state", "{not json")
    set_last(taskmesh_client, "b.good", 0)
    fired, _ = run(scheduler_pass(taskmesh_client))
    assert fired == 1, "b.good fired although a.bad sorts before it"
    assert [i.entry.name for i in taskmesh_client.schedules()] == ["a.corrupt.state", "b.good"]
    assert taskmesh_client.remove_schedule("a.bad"), "an unreadable entry can still be removed"
    assert taskmesh_client.pause_schedule("a.corrupt.state"), "a corrupt state is started afresh"


def test_misfire_grace_zero_still_fires_ticks_on_time(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("g0", "sched.job", every=1, misfire_grace=0)
    fired, _ = run(scheduler_pass(taskmesh_client, backdate_ms=1000, name="g0", align_ms=1000))
    assert fired == 1


def test_a_changed_schedule_fires_none_of_the_ticks_before_the_change(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("c", "sched.job", every=10)
    set_last(taskmesh_client, "c", server_ms(taskmesh_client) - 8000)
    changed = server_ms(taskmesh_client)
    taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up")
    restarted = cron_state(taskmesh_client, "c")["last"]
    assert changed <= restarted <= server_ms(taskmesh_client), "the change restarts the state at its own time"
    first = restarted - restarted % 1000 + 1000  # the first tick of the new timing after the change
    wait_until(lambda: server_ms(taskmesh_client) >= first, timeout=5, message="the first tick after the change")
    fired, _ = run(scheduler_pass(taskmesh_client, name="c"))
    # The eight ticks missed under the old timing stay unfired; every tick after the change fires, from the first.
    ticks = [int(e["job"].partition("@")[2]) for e in stream(taskmesh_client, "enqueued") if e["job"].startswith("c@")]
    assert ticks, f"no tick fired after the change (state restarted at {restarted}, first tick {first})"
    assert ticks == list(range(first, first + 1000 * fired, 1000)), (changed, restarted, ticks)
    assert cron_state(taskmesh_client, "c")["last"] == ticks[-1]
    taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up")  # unchanged: state kept
    assert cron_state(taskmesh_client, "c")["last"] == ticks[-1], "storing the same schedule again changes nothing"


def test_storing_an_unchanged_schedule_again_keeps_its_missed_ticks(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("u", "sched.job", every=1, misfire="catch_up")
    now = server_ms(taskmesh_client)
    last = now - now % 1000 - 5000  # five whole seconds ago: at least five ticks missed since
    set_last(taskmesh_client, "u", last)
    taskmesh_client.schedule("u", "sched.job", every=1, misfire="catch_up")  # the same schedule again
    assert cron_state(taskmesh_client, "u")["last"] == last, "the state is kept, not restarted"
    fired, _ = run(scheduler_pass(taskmesh_client, name="u"))
    ticks = [int(e["tick"]) for e in stream(taskmesh_client, "enqueued") if e.get("schedule") == "u"]
    assert fired >= 5 and ticks == list(range(last + 1000, last + 1000 * (fired + 1), 1000)), (last, ticks)


def test_a_removed_schedule_raced_by_a_pass_and_added_again_fires_no_old_ticks(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("r", "sched.job", every=1, misfire="catch_up")
    before = taskmesh_client.schedules()[0].entry
    taskmesh_client.remove_schedule("r")

    async def late_pass() -> int:
        conn = AsyncQueueStore(taskmesh_client.settings)
        try:
            scheduler = Scheduler(taskmesh_client.settings, conn)
            # A pass that read the entry and its state (none yet: a race) before the removal.
            await scheduler._fire_due(before, "{}", None, server_ms(taskmesh_client))
            return scheduler.fired
        finally:
            await conn.aclose()

    assert run(late_pass()) == 0
    assert taskmesh_client.redis.hget(taskmesh_client.keys("default").cron, "r") is None


def test_a_worker_moving_a_code_schedule_to_another_queue_leaves_no_state_behind(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    moved = ScheduleEntry("sched.every_second", "sched.every_second", "old", Schedule(every=1), origin="code")
    taskmesh_client.redis.hset(f"{{{taskmesh_client.settings.prefix}}}:schedules", moved.name, moved.to_json())
    taskmesh_client.redis.hset(taskmesh_client.keys("old").cron, moved.name, json.dumps({"last": 0}))
    taskmesh_worker([every_second])
    assert taskmesh_client.redis.hget(taskmesh_client.keys("old").cron, moved.name) is None
    [info] = taskmesh_client.schedules()
    assert info.entry.queue == "default"
