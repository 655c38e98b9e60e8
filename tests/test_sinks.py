"""Event sinks: every lifecycle event through the worker's bounded bus, one worker per event, apart from dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, Event, Registry, Settings, Worker, hookimpl, task
from taskmesh.sinks import Sink, SinkRegistry
from taskmesh.sinks import bus as bus_module
from taskmesh.testing import RunningWorker, wait_until

pytestmark = pytest.mark.cluster  # also against a 3-master Redis Cluster: each queue's stream on its own node
BOUND = 10.0


@task(name="sinks.double")
def double(x: int) -> int:
    return 2 * x


@task(name="sinks.broken")
def broken() -> None:
    raise ValueError("no")


class Collect:
    """Appends every event it is given to ``seen``; ``behaviour`` may make it slow or failing."""

    def __init__(self, seen: list[Event], behaviour: Callable[[], Any] | None = None) -> None:
        self.seen = seen
        self.behaviour = behaviour
        self.closed = False

    async def emit(self, event: Event) -> None:
        self.seen.append(event)
        if self.behaviour is not None:
            await self.behaviour()

    async def close(self) -> None:
        self.closed = True


class Sinks:
    """A plugin registering the given sink factories."""

    def __init__(self, **factories: Callable[[Settings], Sink]) -> None:
        self.factories = factories

    @hookimpl
    def taskmesh_register_sinks(self, register: SinkRegistry) -> None:
        for name, factory in self.factories.items():
            register.add(name, factory)


@pytest.fixture
def start(taskmesh_client: Client) -> Iterator[Callable[..., RunningWorker]]:
    """Start a worker with plugin objects (no entry points) and settings; all are stopped at teardown."""
    running: list[RunningWorker] = []

    def run(plugins: list[object], tasks: list[Any] | None = None, **settings: Any) -> RunningWorker:
        cfg = taskmesh_client.settings.replace(queues=("default",), **settings)
        worker = Worker.create(Registry(tasks or [double, broken]), cfg, plugins=plugins, entry_points=False)
        running.append(RunningWorker(worker).start())
        return running[-1]

    yield run
    for worker in running:
        worker.stop(timeout=BOUND)


def names_of(events: list[Event], job_id: str) -> list[str]:
    """The job's event names in stream order (events reach the sinks of several workers in any order)."""
    ordered = sorted(events, key=lambda event: tuple(int(part) for part in event.id.split("-")))
    return [event.name for event in ordered if event.job_id == job_id]


def test_the_log_sink_logs_every_event_of_a_job_as_json_with_its_task_and_duration(
    taskmesh_client: Client, start: Callable[..., RunningWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskmesh.events")
    worker = start([], sinks=("log",))
    handle = double.enqueue(21)
    assert handle.result(timeout=BOUND) == 42

    def logged() -> list[dict[str, Any]]:
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "taskmesh.events"]
        return [record for record in records if record["job"] == handle.id]

    wait_until(lambda: any(r["event"] == "completed" for r in logged()), timeout=BOUND, message="the completed event")
    events = logged()
    assert [r["event"] for r in events] == ["enqueued", "active", "completed"]
    assert all(r["task"] == "sinks.double" and r["queue"] == "default" for r in events)
    assert int(events[-1]["duration_ms"]) >= 0
    stream = taskmesh_client.keys("default").events
    assert [r["id"] for r in events] == [i for i, f in taskmesh_client.redis.xrange(stream) if f["job"] == handle.id]
    worker.stop(timeout=BOUND)
    consumers = taskmesh_client.redis.xinfo_consumers(stream, "sinks:log")
    assert consumers == [], "a worker with nothing pending leaves the group when it stops"


def test_a_stuck_sink_drops_and_counts_while_jobs_and_other_sinks_go_on(
    monkeypatch: pytest.MonkeyPatch,
    taskmesh_client: Client,
    start: Callable[..., RunningWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bus_module, "STOP_WAIT", 0.2)
    stuck: list[Event] = []
    seen: list[Event] = []

    async def forever() -> None:
        await asyncio.Event().wait()

    plugin = Sinks(stuck=lambda s: Collect(stuck, forever), collect=lambda s: Collect(seen))
    worker = start([plugin], sinks=("stuck", "collect"), sink_buffer=5)
    handles = [double.enqueue(0)]
    wait_until(lambda: stuck, timeout=BOUND, message="the stuck sink to take its first event")
    handles += [double.enqueue(i) for i in range(1, 20)]
    assert [h.result(timeout=BOUND) for h in handles] == [2 * i for i in range(20)]
    wait_until(lambda: Counter(e.name for e in seen)["completed"] == 20, timeout=BOUND, message="20 completed events")
    assert len(seen) == 60
    stats = worker.worker.stats
    assert stats.events_dropped == 60 - 6, "one event held by the stuck emit, five in its buffer, the rest dropped"
    assert len(stuck) == 1
    assert any("event sink stuck: " in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


def test_a_failing_sink_is_counted_and_logged_and_the_others_go_on(
    taskmesh_client: Client, start: Callable[..., RunningWorker], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []

    async def fail() -> None:
        raise RuntimeError("sink down")

    plugin = Sinks(failing=lambda s: Collect([], fail), collect=lambda s: Collect(seen))
    worker = start([plugin], sinks=("failing", "collect"))
    handles = [double.enqueue(i) for i in range(5)]
    assert [h.result(timeout=BOUND) for h in handles] == [0, 2, 4, 6, 8]
    wait_until(lambda: len(seen) == 15, timeout=BOUND, message="15 events on the working sink")
    wait_until(lambda: worker.worker.stats.sink_errors == 15, timeout=BOUND, message="15 errors counted")
    warnings = [r.getMessage() for r in caplog.records if "event sink failing" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError('sink down')" in warnings[0], "warned once, not per event"


def test_workers_with_the_same_sinks_share_the_events_and_other_sinks_see_them_all(
    taskmesh_client: Client, start: Callable[..., RunningWorker]
) -> None:
    shared: list[Event] = []
    apart: list[Event] = []
    for _ in range(2):
        start([Sinks(collect=lambda s: Collect(shared))], sinks=("collect",))
    start([Sinks(other=lambda s: Collect(apart))], sinks=("other",))
    handles = [double.enqueue(i) for i in range(30)]
    failed = broken.enqueue()
    assert [h.result(timeout=BOUND) for h in handles] == [2 * i for i in range(30)]
    stream = taskmesh_client.keys("default").events
    wait_until(lambda: len(shared) == len(apart) == 93, timeout=BOUND, message="every event on both groups")
    ids = sorted(entry_id for entry_id, _ in taskmesh_client.redis.xrange(stream))  # as strings, like the others
    assert sorted(e.id for e in shared) == sorted(e.id for e in apart) == ids, "each event once per group"
    assert names_of(shared, failed.id)[-1] == "failed"
    assert [e.data.get("task") for e in shared if e.job_id == failed.id] == ["sinks.broken"] * 3


def test_events_a_dead_consumer_never_acknowledged_are_claimed_by_a_live_worker(
    monkeypatch: pytest.MonkeyPatch, taskmesh_client: Client, start: Callable[..., RunningWorker]
) -> None:
    monkeypatch.setattr(bus_module, "CLAIM_IDLE", 0.2)
    monkeypatch.setattr(bus_module, "CLAIM_EVERY", 0.2)
    monkeypatch.setattr(bus_module, "FORGET_IDLE", 0.5)
    redis = taskmesh_client.redis
    stream = taskmesh_client.keys("default").events
    redis.xgroup_create(stream, "sinks:collect", id="$", mkstream=True)
    handles = [double.enqueue(i) for i in range(3)]
    read = redis.xreadgroup("sinks:collect", "dead-worker", {stream: ">"}, count=10)
    taken = [entry_id for entry_id, _ in read[0][1]]
    assert len(taken) == 3, "the dead worker read the three enqueued events and never acknowledged them"
    seen: list[Event] = []
    start([Sinks(collect=lambda s: Collect(seen))], sinks=("collect",))
    assert [h.result(timeout=BOUND) for h in handles] == [0, 2, 4]
    wait_until(lambda: set(taken) <= {e.id for e in seen}, timeout=BOUND, message="the claimed events delivered")
    assert Counter(e.id for e in seen)[taken[0]] == 1
    wait_until(
        lambda: "dead-worker" not in [c["name"] for c in redis.xinfo_consumers(stream, "sinks:collect")],
        timeout=BOUND,
        message="the dead consumer forgotten",
    )


def test_a_burst_worker_delivers_its_last_events_before_it_returns(taskmesh_client: Client) -> None:
    seen: list[Event] = []
    closed: list[Collect] = []

    def factory(settings: Settings) -> Sink:
        closed.append(Collect(seen))
        return closed[-1]

    handles = [double.enqueue(i) for i in range(10)]
    cfg = taskmesh_client.settings.replace(sinks=("collect",))
    worker = Worker.create(Registry([double]), cfg, burst=True, plugins=[Sinks(collect=factory)], entry_points=False)
    asyncio.run(asyncio.wait_for(worker.run(), BOUND))
    assert [names_of(seen, h.id) for h in handles] == [["active", "completed"]] * 10
    assert closed[0].closed


def test_an_unknown_sink_is_a_start_up_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown sink\(s\) nope in the sinks setting; known sinks: log"):
        Worker.create(Registry([double]), Settings(sinks=("nope",)), entry_points=False)
