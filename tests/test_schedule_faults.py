"""Schedules whatever becomes of a change's calls and whatever the schedules hash holds: a change is one
step for the schedulers, arguments a job would refuse are refused when a schedule is added, and an entry
that cannot fire is skipped with one warning and can be removed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis

from taskmesh import Client, Schedule, task
from taskmesh.cli import main as cli_main
from taskmesh.dispatch.scheduler import Scheduler
from taskmesh.errors import PayloadError, RedisUnavailable
from taskmesh.registry import Registry
from taskmesh.schedule import ScheduleEntry
from taskmesh.store import AsyncQueueStore, connect, scripts
from taskmesh.store.keys import schedules_key
from taskmesh.testing import wait_until

pytestmark = pytest.mark.also_cluster
BIG = ["x" * 600_000]  # over the default max_payload_bytes (512 KiB)


def server_ms(client: Client) -> int:
    seconds, micros = client.redis.time()
    return seconds * 1000 + micros // 1000


def set_last(client: Client, name: str, last: int, queue: str = "default") -> None:
    """Backdate a schedule's state: its last handled tick (the rest of the state kept)."""
    key = client.keys(queue).cron
    raw = client.redis.hget(key, name)
    client.redis.hset(key, name, json.dumps({**(json.loads(cast(str, raw)) if raw else {}), "last": last}))


def fired_ticks(client: Client, name: str, queue: str = "default") -> list[int]:
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys(queue).events))
    return [int(f["tick"]) for _, f in entries if f["event"] == "enqueued" and f.get("schedule") == name]


def passes(client: Client, count: int = 1) -> int:
    """``count`` passes of one scheduler (on a connection like a worker's); the jobs it enqueued."""

    async def main() -> int:
        conn = AsyncQueueStore(client.settings)
        try:
            scheduler = Scheduler(client.settings, conn)
            for _ in range(count):
                await scheduler.tick()
            return scheduler.fired
        finally:
            await conn.aclose()

    return asyncio.run(main())


# -- a change is one step (issue 10, finding 8) ----------------------------------------------------------

YEARLY: dict[str, Any] = {"cron": "0 0 1 1 *"}  # no tick of the old timing falls in the test
EVERY_SECOND: dict[str, Any] = {"every": 1, "misfire": "catch_up"}  # a tick of the new timing in every second


def changed_schedule(client: Client) -> int:
    """A yearly schedule "c" whose state last handled a tick 8 s ago (8 ticks of the new timing)."""
    client.schedule("c", "sched.job", **YEARLY)
    set_last(client, "c", server_ms(client) - 8000)
    return server_ms(client)


def test_an_entry_changed_without_its_cron_call_fires_no_tick_from_before_the_change(
    taskmesh_client: Client,
) -> None:
    changed = changed_schedule(taskmesh_client)
    # Stored without the client's script call (its connection dropped; an older version; by hand).
    new = ScheduleEntry("c", "sched.job", "default", Schedule(**EVERY_SECOND))
    taskmesh_client.redis.hset(schedules_key(taskmesh_client.settings.prefix), "c", new.to_json())
    passes(taskmesh_client)
    assert [t for t in fired_ticks(taskmesh_client, "c") if t < changed] == []


Failure = Callable[[pytest.MonkeyPatch, Client], None]


def cron_call_lost(monkeypatch: pytest.MonkeyPatch, client: Client) -> None:
    """Every ``cron`` script call fails before it reaches Redis."""
    call = scripts.call

    def failing(conn: Any, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
        if name == "cron":
            raise redis.exceptions.ConnectionError("connection dropped (test)")
        return call(conn, name, keys, args)

    monkeypatch.setattr(scripts, "call", failing)


def cron_reply_lost(monkeypatch: pytest.MonkeyPatch, client: Client) -> None:
    """Every ``cron`` script call runs, and its reply is lost."""
    call = scripts.call

    def failing(conn: Any, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
        result = call(conn, name, keys, args)
        if name == "cron":
            raise redis.exceptions.ConnectionError("connection dropped (test)")
        return result

    monkeypatch.setattr(scripts, "call", failing)


def entry_reply_lost(monkeypatch: pytest.MonkeyPatch, client: Client) -> None:
    """The entry is stored, and the reply is lost."""
    hset = client.redis.hset

    def failing(*args: Any, **kwargs: Any) -> Any:
        hset(*args, **kwargs)
        raise redis.exceptions.ConnectionError("connection dropped (test)")

    monkeypatch.setattr(client.redis, "hset", failing)


@pytest.mark.parametrize("failure", [cron_call_lost, cron_reply_lost, entry_reply_lost])
def test_a_change_that_failed_part_way_fires_no_tick_from_before_it_then_or_after_a_retry(
    taskmesh_client: Client, monkeypatch: pytest.MonkeyPatch, failure: Failure
) -> None:
    changed = changed_schedule(taskmesh_client)
    with monkeypatch.context() as patch:
        failure(patch, taskmesh_client)
        with pytest.raises(RedisUnavailable):
            taskmesh_client.schedule("c", "sched.job", **EVERY_SECOND)
    stored = taskmesh_client.schedules()[0].entry.schedule.every is not None
    if stored:  # the change took effect: a tick after it is due within a second, and runs (catch_up)
        wait_until(lambda: server_ms(taskmesh_client) >= changed + 2000, timeout=5, message="two seconds on")
    passes(taskmesh_client)
    ticks = fired_ticks(taskmesh_client, "c")
    assert [t for t in ticks if t < changed] == [], "a tick from before the change fired"
    assert bool(ticks) == stored, ticks
    taskmesh_client.schedule("c", "sched.job", **EVERY_SECOND)  # the caller tries again
    passes(taskmesh_client)
    assert [t for t in fired_ticks(taskmesh_client, "c") if t < changed] == []


def test_a_pass_that_read_the_old_entry_fires_no_tick_of_it_after_the_change(taskmesh_client: Client) -> None:
    taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up")
    old = taskmesh_client.schedules()[0].entry
    set_last(taskmesh_client, "c", server_ms(taskmesh_client) - 8000)
    changed = server_ms(taskmesh_client)
    taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up", args=[2])

    async def late_fire() -> list[str]:
        conn = AsyncQueueStore(taskmesh_client.settings)
        try:
            # A pass that read the old entry before the change fires its ticks after it.
            ticks = json.dumps(old.schedule.due(changed - 8000, changed, 100))
            args = [old.version, "sched.job", '{"t":"sched.job","a":[],"k":{}}', 0, "allow", ticks, 0]
            return await conn.fire_schedule("default", "c", *args)
        finally:
            await conn.aclose()

    assert asyncio.run(late_fire()) == []
    passes(taskmesh_client)
    assert [t for t in fired_ticks(taskmesh_client, "c") if t < changed] == []


def look_by_hand(client: Client, entry: ScheduleEntry) -> None:
    """A scheduler's ``cron look`` at the schedule ``entry`` (it keeps what it adjusts)."""
    [look] = client.store.look_schedules([entry], keep=True)
    assert not isinstance(look, Exception), look


def test_a_look_at_the_entry_read_before_a_change_does_not_restart_the_new_version(taskmesh_client: Client) -> None:
    old = taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up")
    passes(taskmesh_client)  # the state is kept for the first version
    new = taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up", args=[2])
    changed = server_ms(taskmesh_client)
    look_by_hand(taskmesh_client, new)  # scheduler B read the new entry
    wait_until(lambda: server_ms(taskmesh_client) >= changed + 1500, timeout=5, message="a tick after the change")
    look_by_hand(taskmesh_client, old)  # scheduler A, which read the entry just before the change
    passes(taskmesh_client)
    ticks = [t for t in fired_ticks(taskmesh_client, "c") if t > changed]
    assert ticks and ticks[0] <= changed + 1000, f"the new version's first tick was dropped: {ticks}"
    state = json.loads(cast(str, taskmesh_client.redis.hget(taskmesh_client.keys("default").cron, "c")))
    assert state["v"] == new.version


def test_an_older_entry_stored_after_a_newer_one_is_taken_back_at_the_next_pass(taskmesh_client: Client) -> None:
    old = taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up")
    new = taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up", args=[2])
    again = taskmesh_client.schedule("c", "sched.job", every=1, misfire="catch_up", args=[2])
    assert (old.rev, new.rev, again.rev) == (1, 2, 2)  # unchanged: the revision stays
    passes(taskmesh_client)
    taskmesh_client.redis.hset(schedules_key(taskmesh_client.settings.prefix), "c", old.to_json())  # a restore

    def kept_for() -> str:
        raw = taskmesh_client.redis.hget(taskmesh_client.keys("default").cron, "c")
        return cast(str, json.loads(cast(str, raw))["v"])

    async def two_passes() -> list[str]:
        conn = AsyncQueueStore(taskmesh_client.settings)
        try:
            scheduler, seen = Scheduler(taskmesh_client.settings, conn), []
            for _ in range(2):
                await scheduler.tick()
                seen.append(kept_for())
            return seen
        finally:
            await conn.aclose()

    assert asyncio.run(two_passes()) == [new.version, old.version]
    taken_back = server_ms(taskmesh_client)
    wait_until(lambda: server_ms(taskmesh_client) >= taken_back + 1500, timeout=5, message="a tick after it")
    passes(taskmesh_client)
    assert [t for t in fired_ticks(taskmesh_client, "c") if t > taken_back], "the entry stored does not fire"


# -- arguments are checked when a schedule is added (finding 12) -----------------------------------------


def test_a_schedule_with_arguments_a_job_may_not_have_is_refused_when_added(taskmesh_client: Client) -> None:
    with pytest.raises(PayloadError, match="over the 524288-byte limit"):
        taskmesh_client.schedule("big", "sched.job", every=60, args=BIG)
    with pytest.raises(PayloadError, match="over the 524288-byte limit"):
        asyncio.run(taskmesh_client.aschedule("big", "sched.job", every=60, kwargs={"blob": BIG[0]}))
    deep: list[Any] = []
    for _ in range(150):
        deep = [deep]
    with pytest.raises(PayloadError, match="nested deeper than 100 levels"):
        taskmesh_client.schedule("deep", "sched.job", every=60, args=[deep])
    with pytest.raises(ValueError, match="keyword argument names must be strings"):
        taskmesh_client.schedule("keys", "sched.job", every=60, kwargs={1: "one"})
    assert taskmesh_client.redis.hlen(schedules_key(taskmesh_client.settings.prefix)) == 0
    code = task(name="sched.big", schedule=Schedule(every=60, args=BIG))(lambda blob: None)

    async def sync() -> None:
        conn = AsyncQueueStore(taskmesh_client.settings)
        try:
            await Scheduler(taskmesh_client.settings, conn).sync(Registry([code]))
        finally:
            await conn.aclose()

    with pytest.raises(PayloadError, match=r"task sched\.big's schedule: payload is"):
        asyncio.run(sync())  # a worker declaring it does not start
    assert taskmesh_client.redis.hlen(schedules_key(taskmesh_client.settings.prefix)) == 0


# -- entries that cannot fire (finding 13) -------------------------------------------------------------------


def good_entry(queue: str = "default", **fields: Any) -> dict[str, Any]:
    return {"task": "sched.job", "queue": queue, "priority": 0, "origin": "api", "schedule": {"every": 1, **fields}}


HOSTILE: dict[bytes, bytes] = {
    b"a.bad.queue": json.dumps(good_entry(queue="no such queue!")).encode(),
    b"a.not.json": b"{not json",
    b"a.not.object": b"[1, 2]",
    b"a.schedule.list": json.dumps({**good_entry(), "schedule": []}).encode(),
    b"a.task.number": json.dumps({**good_entry(), "task": 5}).encode(),
    b"a.start.number": json.dumps(good_entry(start=5)).encode(),
    b"a.every.string": json.dumps(good_entry(every="1")).encode(),
    b"a.deep": b'{"task": "sched.job", "queue": "default", "schedule": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"a.not.utf8": json.dumps(good_entry()).encode().replace(b"sched.job", b"sched.\xff"),
    b"a.big.args": json.dumps(good_entry(args=BIG)).encode(),
    b"a name with spaces": json.dumps(good_entry()).encode(),
    b"a.name.\xff": json.dumps(good_entry()).encode(),
}


def store_hostile(client: Client) -> None:
    raw = connect.sync_client(client.settings.redis_url, decode_responses=False)
    try:
        raw.hset(schedules_key(client.settings.prefix), mapping=HOSTILE)  # type: ignore[arg-type]
    finally:
        raw.close()


def test_entries_that_cannot_fire_are_skipped_with_one_warning_each_and_the_others_fire(
    taskmesh_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    store_hostile(taskmesh_client)
    taskmesh_client.schedule("z.good", "sched.job", every=3600, misfire_grace=3600)
    set_last(taskmesh_client, "z.good", server_ms(taskmesh_client) - 7_200_000)  # one tick due, the next in an hour
    taskmesh_client.schedule("b.broken.queue", "sched.job", every=1, misfire_grace=3600, queue="broken")
    set_last(taskmesh_client, "b.broken.queue", server_ms(taskmesh_client) - 5000, queue="broken")
    taskmesh_client.redis.set(taskmesh_client.keys("broken").jobs, "not a hash")  # its fire call fails

    with caplog.at_level(logging.WARNING, logger="taskmesh.scheduler"):
        fired = passes(taskmesh_client, count=3)
    assert fired == 1, "z.good fired although every other entry sorts before it"
    logged = [r.getMessage() for r in caplog.records if r.name == "taskmesh.scheduler"]
    for name in [n.decode("utf-8", "surrogateescape") for n in HOSTILE] + ["b.broken.queue"]:
        about = [m for m in logged if m.startswith((f"schedule {name!r} ", f"schedule {name} ", f"schedule {name}:"))]
        assert len(about) == 1, (name, about)
    assert len(logged) == len(HOSTILE) + 1, logged


def test_entries_that_cannot_fire_are_left_out_of_the_list_and_can_be_removed(
    taskmesh_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    store_hostile(taskmesh_client)
    taskmesh_client.schedule("z.good", "sched.job", every=60)
    args = ["--redis-url", taskmesh_client.settings.redis_url, "--prefix", taskmesh_client.settings.prefix]
    assert cli_main(["schedules", "remove", "a.bad.queue", *args]) == 0
    assert capsys.readouterr().out.strip() == "a.bad.queue: removed"
    listed = ["a.big.args", "z.good"]  # a worker with a higher max_payload_bytes fires a.big.args
    assert [i.entry.name for i in taskmesh_client.schedules()] == listed
    assert [i.entry.name for i in asyncio.run(taskmesh_client.aschedules())] == listed
    with pytest.raises(ValueError, match="cannot be read; remove it"):
        taskmesh_client.pause_schedule("a.not.json")
    for field in HOSTILE:
        if field != b"a.bad.queue":
            assert taskmesh_client.remove_schedule(field.decode("utf-8", "surrogateescape")), field
    assert taskmesh_client.redis.hkeys(schedules_key(taskmesh_client.settings.prefix)) == ["z.good"]


def cli_args(client: Client) -> list[str]:
    return ["--redis-url", client.settings.redis_url, "--prefix", client.settings.prefix]


def test_a_queue_whose_state_key_has_the_wrong_type_stops_only_its_own_schedules(
    taskmesh_client: Client, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    taskmesh_client.schedule("a.other", "sched.job", every=1, queue="other")
    taskmesh_client.schedule("z.good", "sched.job", every=3600, misfire_grace=3600)
    set_last(taskmesh_client, "z.good", server_ms(taskmesh_client) - 7_200_000)  # one tick due
    taskmesh_client.redis.set(taskmesh_client.keys("other").cron, "x")  # every look in 'other' fails

    with caplog.at_level(logging.WARNING, logger="taskmesh.scheduler"):
        fired = passes(taskmesh_client, count=3)
    assert fired == 1, "z.good did not fire"
    logged = [r.getMessage() for r in caplog.records if r.name == "taskmesh.scheduler"]
    assert len(logged) == 1 and logged[0].startswith("schedule a.other cannot fire: its state in "), logged
    assert "WRONGTYPE" in logged[0]

    expected = [("a.other", "unreadable", None), ("z.good", "active", 3600.0)]
    for infos in (taskmesh_client.schedules(), asyncio.run(taskmesh_client.aschedules())):
        assert [(i.entry.name, i.status, i.entry.schedule.every if i.next_tick else None) for i in infos] == expected
    assert cli_main(["schedules", *cli_args(taskmesh_client)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[:6] for line in out.splitlines()[1:]] == [
        ["a.other", "sched.job", "other", "every", "1s", "unreadable"],
        ["z.good", "sched.job", "default", "every", "3600s", "active"],
    ]
    key = taskmesh_client.keys("other").cron
    assert f"taskmesh: the schedulers skip schedule a.other: its state in {key} cannot be read (" in err


def test_the_list_shows_a_schedule_with_arguments_over_the_limit_as_skipped_and_why(
    taskmesh_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    store_hostile(taskmesh_client)
    taskmesh_client.schedule("z.good", "sched.job", every=60)

    infos = {i.entry.name: i for i in taskmesh_client.schedules()}
    assert (infos["a.big.args"].status, infos["a.big.args"].next_tick) == ("skipped", None)
    assert "over the 524288-byte limit" in str(infos["a.big.args"].skipped)
    assert (infos["z.good"].status, infos["z.good"].skipped) == ("active", None)
    assert cli_main(["schedules", *cli_args(taskmesh_client)]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["a.big.args"][5:7] == ["skipped", "-"]
    assert "taskmesh: the schedulers skip schedule a.big.args: its arguments cannot be enqueued (" in err
    assert "over the 524288-byte limit" in err
    assert cli_main(["schedules", "--json", *cli_args(taskmesh_client)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed[0]["name"], listed[0]["status"], listed[0]["next_tick"]) == ("a.big.args", "skipped", None)
