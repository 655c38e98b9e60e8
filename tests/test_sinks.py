"""Event sinks: every lifecycle event through the worker's bounded bus, one worker per event, apart from dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, Event, Job, Registry, Settings, Worker, hookimpl, task
from taskmesh.events import MAX_EVENT_BYTES
from taskmesh.job import MAX_LOG_CHARS, MAX_PROGRESS_BYTES
from taskmesh.sinks import Sink, SinkRegistry
from taskmesh.sinks import bus as bus_module
from taskmesh.testing import RunningWorker, wait_until

pytestmark = pytest.mark.also_cluster  # also against a 3-master Redis Cluster: each queue's stream on its own node
BOUND = 10.0


@task(name="sinks.double")
def double(x: int) -> int:
    return 2 * x


@task(name="sinks.largest")
def largest(job: Job) -> None:
    job.progress({"p": "x" * (MAX_PROGRESS_BYTES - len('{"p":""}'))})
    job.log("\U0001f600" * MAX_LOG_CHARS)  # 4 bytes a character in UTF-8


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
    record = json.loads(taskmesh_client.redis.hget(taskmesh_client.keys("default").jobs, handle.id))
    assert int(events[-1]["duration_ms"]) == record["finished"] - record["started"]
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


# -- hostile entries: anything that can write to Redis can write to a stream or a job record ---------


def pending(taskmesh_client: Client, group: str) -> int:
    return int(taskmesh_client.redis.xpending(taskmesh_client.keys("default").events, group)["pending"])


@pytest.mark.parametrize(
    ("record", "task"),
    [
        pytest.param(b"[1, 2]", None, id="a JSON list"),
        pytest.param(b"42", None, id="a JSON number"),
        pytest.param(b"not JSON", None, id="not JSON"),
        pytest.param(b"\xff\xfe{}", None, id="invalid UTF-8"),
        pytest.param(b"[" * 100_000, None, id="nested past the parser's depth"),
        pytest.param(b'{"task": "a' + b"9" * 5000 + b'"}', None, id="a task name too long"),
        pytest.param(b'{"task": ["x"], "started": "0", "finished": true}', None, id="wrong types"),
        pytest.param(b'{"task": "forged.task", "started": NaN, "finished": 1e999}', "forged.task", id="NaN"),
        pytest.param(
            b'{"task": "forged.task", "started": 0, "finished": 1' + b"0" * 400 + b"}",
            "forged.task",
            id="an int past a float's range",
        ),
        pytest.param(b'{"task": "forged.task", "started": 10, "finished": 5}', "forged.task", id="backwards"),
    ],
)
def test_a_job_record_not_as_taskmesh_writes_it_leaves_its_event_bare_and_the_reader_going_on(
    taskmesh_client: Client,
    start: Callable[..., RunningWorker],
    caplog: pytest.LogCaptureFixture,
    record: bytes,
    task: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="taskmesh.events")
    start([], sinks=("log",))
    redis, keys = taskmesh_client.redis, taskmesh_client.keys("default")
    redis.hset(keys.jobs, "forged", record)
    forged = str(redis.xadd(keys.events, {"event": "completed", "job": "forged"}))
    handle = double.enqueue(21)
    assert handle.result(timeout=BOUND) == 42

    def logged() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "taskmesh.events"]

    wait_until(
        lambda: [r["event"] for r in logged() if r["job"] == handle.id] == ["enqueued", "active", "completed"],
        timeout=BOUND,
        message="the real job's events after the forged record's",
    )
    [bare] = [r for r in logged() if r["id"] == forged]
    expected = {"id": forged, "queue": "default", "event": "completed", "job": "forged"}
    assert bare == {**expected, **({"task": task} if task else {})}
    wait_until(lambda: pending(taskmesh_client, "sinks:log") == 0, timeout=BOUND, message="every event acknowledged")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"job": "j1"}, id="no event name"),
        pytest.param({"event": "exploded", "job": "j1"}, id="an unknown event name"),
        pytest.param({"event": "enqueued"}, id="no job field"),
        pytest.param({"event": "enqueued", "job": "a b{"}, id="an invalid job id"),
        pytest.param({"event": "enqueued", "job": "j1", "id": "0-1"}, id="a field shadowing the event id"),
        pytest.param({"event": "log", "job": "j1", "message": "x" * MAX_EVENT_BYTES}, id="larger than any event"),
        pytest.param({"event": "completed", "job": ""}, id="a job event without a job"),
        pytest.param({"event": "enqueued", "job": b"j\xff\xfe"}, id="invalid UTF-8 in a value"),
        pytest.param({b"\xc3(": "x", "event": "enqueued", "job": "j1"}, id="invalid UTF-8 in a name"),
    ],
)
def test_a_malformed_stream_entry_is_skipped_counted_logged_with_its_id_and_acknowledged(
    taskmesh_client: Client,
    start: Callable[..., RunningWorker],
    caplog: pytest.LogCaptureFixture,
    fields: dict[Any, Any],
) -> None:
    seen: list[Event] = []
    worker = start([Sinks(collect=lambda s: Collect(seen))], sinks=("collect",), max_payload_bytes=1024)
    bad = str(taskmesh_client.redis.xadd(taskmesh_client.keys("default").events, fields))
    handle = double.enqueue(4)
    assert handle.result(timeout=BOUND) == 8
    wait_until(lambda: names_of(seen, handle.id) == ["enqueued", "active", "completed"], timeout=BOUND)
    assert bad not in [e.id for e in seen] and len(seen) == 3
    assert worker.worker.stats.events_skipped == 1
    [warning] = [r.getMessage() for r in caplog.records if r.name == "taskmesh.sinks"]
    assert f"event bus: skipped entry {bad} of queue default (" in warning
    wait_until(lambda: pending(taskmesh_client, "sinks:collect") == 0, timeout=BOUND, message="the bad entry acked")


def test_the_largest_progress_and_log_line_a_task_reports_reach_the_sinks_whatever_max_payload_bytes(
    start: Callable[..., RunningWorker], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    worker = start([Sinks(collect=lambda s: Collect(seen))], [largest], sinks=("collect",), max_payload_bytes=1024)
    handle = largest.enqueue()
    handle.result(timeout=BOUND)
    wait_until(lambda: "completed" in names_of(seen, handle.id), timeout=BOUND, message="the completed event")
    assert names_of(seen, handle.id) == ["enqueued", "active", "progress", "log", "completed"]
    [progress] = [e for e in seen if e.name == "progress"]
    [line] = [e for e in seen if e.name == "log"]
    assert len(progress.data["progress"]) == MAX_PROGRESS_BYTES
    assert line.data["message"] == "\U0001f600" * MAX_LOG_CHARS
    assert worker.worker.stats.events_skipped == 0
    assert not [r for r in caplog.records if r.name == "taskmesh.sinks"]


def test_the_docs_count_skipped_entries_where_the_worker_does() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "guide" / "sinks.md").read_text()
    found = re.search(r"\*\*Entries that are not events are skipped, never fatal\.\*\*(.*?)\n\n", page, re.S)
    assert found, "docs/guide/sinks.md lost its paragraph on skipped entries"
    assert "`WorkerStats.events_skipped`" in found[1] and "events_dropped" not in found[1]


def test_a_flood_of_malformed_entries_is_logged_once_and_the_events_after_it_arrive(
    taskmesh_client: Client, start: Callable[..., RunningWorker], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    worker = start([Sinks(collect=lambda s: Collect(seen))], sinks=("collect",))
    pipe = taskmesh_client.redis.pipeline(transaction=False)
    for i in range(600):
        pipe.xadd(taskmesh_client.keys("default").events, {"event": "exploded", "job": str(i)})
    pipe.execute()
    handle = double.enqueue(4)
    assert handle.result(timeout=BOUND) == 8
    wait_until(lambda: names_of(seen, handle.id) == ["enqueued", "active", "completed"], timeout=BOUND)
    assert len(seen) == 3 and worker.worker.stats.events_skipped == 600
    assert len([r for r in caplog.records if r.name == "taskmesh.sinks"]) == 1, "one warning, not one per entry"
    wait_until(lambda: pending(taskmesh_client, "sinks:collect") == 0, timeout=BOUND, message="all acked")
    worker.stop(timeout=BOUND)
    last = [r.getMessage() for r in caplog.records if r.name == "taskmesh.sinks"][-1]
    assert "and 598 more since the last warning; 600 skipped so far" in last, "the rest reported at the stop"


def test_an_entry_whose_handling_raises_is_skipped_alone(
    monkeypatch: pytest.MonkeyPatch,
    taskmesh_client: Client,
    start: Callable[..., RunningWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = Event.from_entry.__func__  # type: ignore[attr-defined]

    def from_entry(cls: type[Event], queue: str, entry_id: str, fields: dict[str, str]) -> Event:
        if fields.get("job") == "poison":
            raise RuntimeError("a bug in event parsing")
        return real(cls, queue, entry_id, fields)  # type: ignore[no-any-return]

    monkeypatch.setattr(Event, "from_entry", classmethod(from_entry))
    seen: list[Event] = []
    start([Sinks(collect=lambda s: Collect(seen))], sinks=("collect",))
    stream = taskmesh_client.keys("default").events
    poison = str(taskmesh_client.redis.xadd(stream, {"event": "enqueued", "job": "poison"}))
    handle = double.enqueue(4)
    assert handle.result(timeout=BOUND) == 8
    wait_until(lambda: names_of(seen, handle.id) == ["enqueued", "active", "completed"], timeout=BOUND)
    assert poison not in [e.id for e in seen]
    [warning] = [r for r in caplog.records if r.name == "taskmesh.sinks"]
    assert f"skipped entry {poison} of queue default (RuntimeError('a bug in event parsing'))" in warning.getMessage()
    assert warning.exc_info is not None, "an unexpected error is logged with its traceback"
    wait_until(lambda: pending(taskmesh_client, "sinks:collect") == 0, timeout=BOUND, message="the entry acked")


def test_a_failed_read_is_logged_and_the_reader_goes_on_and_delivers_what_it_had_read(
    monkeypatch: pytest.MonkeyPatch,
    taskmesh_client: Client,
    start: Callable[..., RunningWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bus_module, "CLAIM_IDLE", 0.2)
    monkeypatch.setattr(bus_module, "CLAIM_EVERY", 0.2)
    real = bus_module.EventBus._enrich
    failures = [RuntimeError("a bug in the reader")]

    async def enrich(self: bus_module.EventBus, *args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(self, *args)

    monkeypatch.setattr(bus_module.EventBus, "_enrich", enrich)
    seen: list[Event] = []
    start([Sinks(collect=lambda s: Collect(seen))], sinks=("collect",))
    handle = double.enqueue(4)
    assert handle.result(timeout=BOUND) == 8
    wait_until(lambda: names_of(seen, handle.id) == ["enqueued", "active", "completed"], timeout=BOUND)
    assert len(seen) == 3, "the events of the failed read come back through the claim, once"
    [error] = [r for r in caplog.records if "event bus: reading queue default failed" in r.getMessage()]
    assert error.exc_info is not None and "a bug in the reader" in str(error.exc_info[1])
