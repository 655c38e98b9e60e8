"""The stores, the one way taskmesh talks to Redis: typed calls in, typed results out, on a real Redis.

``QueueStore`` and ``AsyncQueueStore`` are twins (same methods, same parameters); each script call builds its
arguments and parses its reply in the store, so a caller sees job ids, flags and states, never a raw reply.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterator

import pytest

from taskmesh import Client, Schedule, ScheduleEntry
from taskmesh.store import (
    AsyncQueueStore,
    EventEntry,
    EventGroup,
    GroupMissing,
    QueueStore,
    ScheduleLook,
    WorkerStore,
)
from taskmesh.store.scripts import Update
from taskmesh.testing import wait_until

pytestmark = pytest.mark.also_cluster  # also run against a Redis Cluster (tests/conftest.py)

PAYLOAD = '{"t":"store.job","a":[],"k":{}}'


def server_ms(store: QueueStore) -> int:
    [look] = store.look_schedules([ScheduleEntry("clock", "store.job", "default", Schedule(every=60))])
    assert isinstance(look, ScheduleLook)
    return look.now_ms


def job(job_id: str, delay_ms: int = 0) -> tuple[str, str, str, int, int, int]:
    return job_id, "store.job", PAYLOAD, 0, delay_ms, 0


@pytest.fixture
def store(taskmesh_client: Client) -> Iterator[QueueStore]:
    store = QueueStore(taskmesh_client.settings)
    yield store
    store.close()


def test_sync_and_async_stores_are_twins_with_the_same_methods_and_parameters() -> None:
    def methods(cls: type) -> dict[str, list[str]]:  # the class's own: the shared ones live in StoreBase
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if inspect.isfunction(member) and not name.startswith("_")
        }

    sync, asynchronous = methods(QueueStore), methods(AsyncQueueStore)
    assert sync.pop("close") == asynchronous.pop("aclose")
    assert sync == asynchronous
    for name in asynchronous:
        assert inspect.iscoroutinefunction(getattr(AsyncQueueStore, name)), name
        assert not inspect.iscoroutinefunction(getattr(QueueStore, name)), name


def test_enqueue_says_whether_it_created_the_job_and_registers_the_queue(store: QueueStore) -> None:
    assert store.enqueue("alpha", job("j1")) is True
    assert store.enqueue("alpha", job("j1")) is False  # the id dedupes
    assert store.queues() == ["alpha"]
    record = store.job_record("alpha", "j1")
    assert record is not None and json.loads(record)["state"] == "waiting"
    assert store.payload("alpha", "j1") == PAYLOAD
    assert store.has_job("alpha", "j1") and not store.has_job("alpha", "nope")
    assert store.job_record("alpha", "nope") is None
    counts = store.counts("alpha")
    assert counts == {"waiting": 1, "delayed": 0, "active": 0, "completed": 0, "failed": 0, "cancelled": 0}


def test_enqueue_many_answers_per_queue_and_job_in_one_call(store: QueueStore) -> None:
    batches = {"alpha": [*job("a1"), *job("a2", delay_ms=60_000)], "beta": [*job("b1")]}
    assert store.enqueue_many(batches) == [[(True, "waiting"), (True, "delayed")], [(True, "waiting")]]
    assert store.enqueue_many({"beta": [*job("b1")]}) == [[(False, "waiting")]]
    assert store.queues() == ["alpha", "beta"]
    assert store.job_ids("alpha", "delayed") == ["a2"]


def test_step_renew_and_sweep_return_typed_results(store: QueueStore) -> None:
    store.enqueue("default", job("j1"))
    stepped = store.step("default", "w1", 5, [])
    assert [(leased.id, leased.task, leased.attempt) for leased in stepped.leased] == [("j1", "store.job", 1)]
    assert (stepped.accepted, stepped.lease_refused, stepped.events_refused, stepped.held) == ([], None, None, False)
    token = stepped.leased[0].token
    assert store.renew("default", [("j1", token), ("gone", 1)]) == (["gone"], [])
    assert store.sweep("default") == ([], [])  # the lease is current
    done = store.step("default", "w1", 0, [Update("c", "j1", token, "42"), Update("c", "j1", token + 1, "0")])
    assert done.accepted == [True, False]  # the second holder's token is stale
    assert store.job_ids("default", "completed") == ["j1"]


def test_cancel_reports_the_jobs_state_afterwards(store: QueueStore) -> None:
    store.enqueue("default", job("j1"))
    assert store.cancel("default", "j1") == "cancelled"
    assert store.cancel("default", "j1") == "cancelled"
    assert store.cancel("default", "never") == "missing"


def test_control_calls_pause_and_limit_the_queue(store: QueueStore) -> None:
    store.pause("gamma")
    store.set_limit("gamma", "store.job", '{"rate":5,"per":60}')
    settings = store.queue_settings("gamma")
    assert settings.paused and set(settings.task_limits) == {"store.job"}
    store.resume("gamma")
    assert not store.queue_settings("gamma").paused
    assert store.queues() == ["gamma"]


def test_schedule_state_is_made_looked_at_and_fired_through_the_store(store: QueueStore) -> None:
    entry = ScheduleEntry("nightly", "store.job", "default", Schedule(every=60))
    store.store_schedule(entry.name, entry.to_json())
    assert store.stored_schedules() == {"nightly": entry.to_json()}
    assert store.stored_schedule("nightly") == entry.to_json() and store.has_schedule("nightly")
    [before] = store.look_schedules([entry])
    assert isinstance(before, ScheduleLook) and before.state is None and before.now_ms > 0
    store.cron("default", "init", entry.name, entry.version, entry.rev)
    [after] = store.look_schedules([entry])
    assert isinstance(after, ScheduleLook) and after.state is not None
    tick = json.loads(after.state)["last"] + 1  # the first tick after the state began
    wait_until(lambda: server_ms(store) > tick, timeout=5, message="the tick passed")  # a future tick never fires
    args = (entry.version, "store.job", PAYLOAD, 0, "allow", f"[{tick}]", 0, entry.rev)
    assert store.fire_schedule("default", entry.name, *args) == [f"nightly@{tick}"]
    assert store.fire_schedule("default", entry.name, *args) == []  # handled: once
    store.delete_schedule(b"nightly")
    assert store.stored_schedule_bytes(b"nightly") is None


def test_a_schedule_whose_state_cannot_be_read_is_that_schedules_error_not_the_calls(
    store: QueueStore, taskmesh_client: Client
) -> None:
    good = ScheduleEntry("good", "store.job", "default", Schedule(every=60))
    bad = ScheduleEntry("bad", "store.job", "broken", Schedule(every=60))
    taskmesh_client.redis.set(store.keys("broken").cron, "not a hash")
    looks = store.look_schedules([good, bad])
    assert isinstance(looks[0], ScheduleLook)
    assert isinstance(looks[1], Exception) and "WRONGTYPE" in str(looks[1])


def test_event_reads_name_the_queue_of_each_entry(store: QueueStore) -> None:
    start = store.last_event_ids(["alpha", "beta"])
    assert start == {"alpha": "0-0", "beta": "0-0"}
    store.enqueue("alpha", job("a1"))
    store.enqueue("beta", job("b1"))
    entries = store.read_events(start, count=10, block=None)
    assert sorted((entry.queue, entry.fields["event"], entry.fields["job"]) for entry in entries) == [
        ("alpha", "enqueued", "a1"),
        ("beta", "enqueued", "b1"),
    ]
    assert all(isinstance(entry, EventEntry) for entry in entries)
    last = store.last_event_ids(["alpha"])
    assert last["alpha"] == next(entry.id for entry in entries if entry.queue == "alpha")
    assert store.read_events(last, count=10, block=None) == []


def test_purge_deletes_the_prefixs_keys_only(taskmesh_client: Client) -> None:
    settings = taskmesh_client.settings
    mine = QueueStore(settings.replace(prefix=settings.prefix + "x"))
    other = QueueStore(settings.replace(prefix=settings.prefix + "xy"))  # shares mine's first characters
    try:
        mine.enqueue("default", job("m1"))
        other.enqueue("default", job("o1"))
        mine.purge()
        assert mine.queues() == [] and mine.job_record("default", "m1") is None
        assert other.queues() == ["default"] and other.job_record("default", "o1") is not None
    finally:
        other.purge()
        mine.close()
        other.close()


def test_async_store_enqueues_and_reads_like_the_sync_one(taskmesh_client: Client) -> None:
    async def main() -> tuple[bool, bool, str | None, dict[str, int]]:
        store = AsyncQueueStore(taskmesh_client.settings)
        try:
            first, again = await store.enqueue("default", job("j1")), await store.enqueue("default", job("j1"))
            return first, again, await store.job_record("default", "j1"), await store.counts("default")
        finally:
            await store.aclose()

    first, again, record, counts = asyncio.run(main())
    assert (first, again, counts["waiting"]) == (True, False, 1)
    assert record is not None and json.loads(record)["task"] == "store.job"


def test_worker_store_leases_the_job_whose_wakeup_ends_its_wait(taskmesh_client: Client, store: QueueStore) -> None:
    async def main() -> list[str]:
        store = WorkerStore(taskmesh_client.settings)
        try:
            await store.register_worker("w1", ["default"], 10_000)
            if store.on_cluster:  # no wait and step on one connection there: the plain wait
                await store.enqueue("default", job("j1"))
                assert await store.wait_for_wakeup(["default"], 5) is not None
                return [leased.id for leased in (await store.step("default", "w1", 1, [])).leased]
            await store.step("default", "w1", 0, [])  # the step script is loaded (else the first wait loads it)
            waiting = asyncio.ensure_future(store.wait_and_lease("default", "w1", 5))
            # Whether the wait is sent before the job is enqueued or after, the wake-up is there for it.
            await store.enqueue("default", job("j1"))
            stepped = await asyncio.wait_for(waiting, 10)
            assert stepped is not None
            return [leased.id for leased in stepped.leased]
        finally:
            await store.aclose()

    assert asyncio.run(main()) == ["j1"]
    assert store.workers() == ["w1"]


def test_event_group_reads_each_entry_once_and_says_when_its_group_is_gone(taskmesh_client: Client) -> None:
    async def main() -> None:
        store = AsyncQueueStore(taskmesh_client.settings)
        group = EventGroup(taskmesh_client.settings, "sinks:test", "c1", 1.0)
        try:
            await group.join("default")
            await group.join("default")  # an existing group is kept
            await store.enqueue("default", job("j1"))
            entries = await group.read_new("default", count=10, block=None)
            assert [fields["job"] for _, fields in entries] == ["j1"]
            assert await group.read_new("default", count=10, block=None) == []
            assert await group.has_pending("default")
            assert await group.job_records("default", ["j1", "nope"]) == [await store.job_record("default", "j1"), None]
            await group.ack("default", [entries[0][0]])
            assert not await group.has_pending("default")
            assert [c.name for c in await group.consumers("default")] == ["c1"]
            await store.redis.delete(store.keys("default").events)
            with pytest.raises(GroupMissing):
                await group.read_new("default", count=10, block=None)
        finally:
            await group.aclose()
            await store.aclose()

    asyncio.run(main())
