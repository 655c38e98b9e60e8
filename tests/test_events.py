"""Following lifecycle events: sync and async iterators, from the start, from an event id, or from now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from taskmesh import Client, Event, Job, PayloadError, WorkerStats, task
from taskmesh.events import MAX_EVENT_BYTES, MalformedEvent
from taskmesh.job import MAX_LOG_CHARS, MAX_PROGRESS_BYTES

pytestmark = pytest.mark.also_cluster  # also run against a Redis Cluster (tests/conftest.py)

Drain = Callable[..., WorkerStats]


@task(name="events.report")
def report(job: Job, n: int) -> int:
    job.progress(50)
    return n


@task(name="events.largest")
def largest(job: Job) -> None:
    job.progress({"p": "x" * (MAX_PROGRESS_BYTES - len('{"p":""}'))})
    job.log("\U0001f600" * MAX_LOG_CHARS)  # 4 bytes a character in UTF-8


@task(name="events.fail", queue="other")
def fail() -> None:
    raise RuntimeError("no")


def names(events: list[Event], job_id: str) -> list[str]:
    return [e.name for e in events if e.job_id == job_id]


def test_events_from_the_start_follow_a_job_in_order(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = report.enqueue(3)
    taskmesh_drain([report])
    events = list(taskmesh_client.events(since="0", timeout=0.1))
    assert names(events, handle.id) == ["enqueued", "active", "progress", "completed"]
    assert all(e.queue == "default" for e in events)
    active, progress = events[1], events[2]
    assert active.data == {"attempt": "1"}
    assert progress.data == {"progress": "50"}
    assert progress.to_dict() == {
        "id": progress.id,
        "queue": "default",
        "event": "progress",
        "job": handle.id,
        "progress": "50",
    }


def test_async_events_follow_a_job_in_order(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = report.enqueue(3)
    taskmesh_drain([report])

    async def follow() -> list[Event]:
        try:
            return [event async for event in taskmesh_client.aevents(since="0", timeout=0.1)]
        finally:
            await taskmesh_client.aclose()

    assert names(asyncio.run(follow()), handle.id) == ["enqueued", "active", "progress", "completed"]


def test_events_resume_after_a_given_event_id(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = report.enqueue(3)
    taskmesh_drain([report])
    first, second, *_ = taskmesh_client.events(since="0", timeout=0)
    resumed = list(taskmesh_client.events(since=second.id, timeout=0))
    assert names(resumed, handle.id) == ["progress", "completed"]
    assert first.id < second.id < resumed[0].id


def test_events_from_now_yield_only_new_events(taskmesh_client: Client) -> None:
    old = report.enqueue(1)
    follower = taskmesh_client.events(since="$", timeout=0.2)
    new = report.enqueue(2)
    delayed = report.options(delay=60).enqueue(3)
    seen = [(e.name, e.job_id) for e in follower]
    assert seen == [("enqueued", new.id), ("delayed", delayed.id)]
    before = [(e.name, e.job_id) for e in taskmesh_client.events(since="0", timeout=0)]
    assert before[0] == ("enqueued", old.id), "the older event is in the stream, only not followed"


def test_events_follow_several_queues_without_missing_any(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    follower = taskmesh_client.events(["default", "other"], since="$", timeout=0.2)
    a = report.enqueue(1)
    first = next(follower)
    b = fail.enqueue()  # appended to the other queue between two reads
    rest = list(follower)
    assert (first.name, first.job_id, first.queue) == ("enqueued", a.id, "default")
    assert [(e.name, e.job_id, e.queue) for e in rest] == [("enqueued", b.id, "other")]
    taskmesh_drain([fail], raise_errors=False)
    tail = list(taskmesh_client.events(["other"], since=rest[-1].id, timeout=0))
    assert names(tail, b.id) == ["active", "failed"]


def test_zero_timeout_returns_at_once_when_nothing_is_new(taskmesh_client: Client) -> None:
    started = time.monotonic()
    assert list(taskmesh_client.events(timeout=0)) == []
    assert list(taskmesh_client.events(since="0", timeout=0)) == []
    assert time.monotonic() - started < 1


def test_a_single_queue_name_may_be_given_as_a_string(taskmesh_client: Client) -> None:
    handle = fail.enqueue()
    [event] = taskmesh_client.events("other", since="0", timeout=0)
    assert (event.queue, event.name, event.job_id) == ("other", "enqueued", handle.id)


def test_parse_takes_the_entries_taskmesh_writes() -> None:
    entries = [
        {"event": "active", "job": "0123abcd", "attempt": "1"},
        {"event": "enqueued", "job": "rapport-été-№1"},  # a job id may be printable non-ASCII
        {"event": "limited", "job": "", "task": "reports.export", "limit": '{"rate":5,"per":1000}'},
        {"event": "log", "job": "j1", "message": "ünïcode ✓"},
        {"event": "paused", "job": ""},
        {"event": "tick_skipped", "job": "", "schedule": "nightly", "tick": "1767225600000", "reason": "overlap"},
        # The largest entries the engine writes: a progress value at its cap, a log line of 4-byte characters.
        {"event": "progress", "job": "j" * 200, "progress": '{"p":"' + "x" * (MAX_PROGRESS_BYTES - 8) + '"}'},
        {"event": "log", "job": "j" * 200, "message": "\U0001f600" * MAX_LOG_CHARS},
    ]
    for fields in entries:
        assert Event.parse("q", "1-0", fields) == Event.from_entry("q", "1-0", fields)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (None, "no fields"),
        ([("event", "enqueued")], "no fields"),
        ({}, "no fields"),
        ({"event": "enqueued", "job": 7}, "a field that is not text"),
        ({"job": "j1"}, "no event name"),
        ({"event": "exploded", "job": "j1"}, "an unknown event name"),
        ({"event": "enqueued"}, "no job field"),
        ({"event": "enqueued", "job": "a b"}, "an invalid job id"),
        ({"event": "enqueued", "job": "x" * 201}, "an invalid job id"),
        ({"event": "enqueued", "job": "j\u202e1"}, "an invalid job id"),
        ({"event": "enqueued", "job": "j1", "id": "0-1"}, "a data field named id or queue"),
        ({"event": "enqueued", "job": "j1", "queue": "other"}, "a data field named id or queue"),
        ({"event": "log", "job": "j1", "message": "x" * MAX_EVENT_BYTES}, f"larger than {MAX_EVENT_BYTES} bytes"),
        ({"event": "completed", "job": ""}, "a job event without a job"),
        ({"event": "progress", "job": "", "progress": "50"}, "a job event without a job"),
        ({"event": "log", "job": "j1", "message": b"\xff".decode("utf-8", "surrogateescape")}, "not valid UTF-8"),
    ],
)
def test_parse_refuses_an_entry_taskmesh_could_not_have_written(fields: object, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        Event.parse("q", "1-0", fields)


def test_progress_over_its_cap_is_refused_where_it_is_reported() -> None:
    sent: list[str] = []
    job = Job("j1", "default", "t", 1, 1, report=lambda kind, job_id, value: sent.append(value))
    job.progress({"p": "x" * (MAX_PROGRESS_BYTES - 8)})
    assert len(sent[-1]) == MAX_PROGRESS_BYTES
    with pytest.raises(PayloadError, match=f"over the {MAX_PROGRESS_BYTES}-byte limit"):
        job.progress({"p": "x" * (MAX_PROGRESS_BYTES - 7)})
    with pytest.raises(PayloadError):
        job.progress({"p": "é" * (MAX_PROGRESS_BYTES // 2)})  # measured as sent: JSON escapes é to 6 bytes
    assert len(sent) == 1


def test_the_largest_progress_and_log_line_a_task_reports_are_followed_whatever_max_payload_bytes(
    taskmesh_client: Client, taskmesh_drain: Drain
) -> None:
    handle = largest.enqueue()
    taskmesh_drain([largest])
    small = Client(settings=taskmesh_client.settings.replace(max_payload_bytes=1024))
    try:
        events = [e for e in small.events(since="0", timeout=0) if e.job_id == handle.id]
    finally:
        small.close()
    assert [e.name for e in events] == ["enqueued", "active", "progress", "log", "completed"]
    assert len(events[2].data["progress"]) == MAX_PROGRESS_BYTES
    assert events[3].data["message"] == "\U0001f600" * MAX_LOG_CHARS


def test_following_events_skips_an_entry_taskmesh_could_not_have_written(taskmesh_client: Client) -> None:
    stream = taskmesh_client.keys("default").events
    taskmesh_client.redis.xadd(stream, {"event": "exploded", "job": "j1"})
    taskmesh_client.redis.xadd(stream, {"event": "enqueued", "job": "j\u202e2"})
    taskmesh_client.redis.xadd(stream, {"event": "enqueued", "job": "j3"})
    seen = [(e.name, e.job_id) for e in taskmesh_client.events(since="0", timeout=0)]
    assert seen == [("enqueued", "j3")]

    async def follow() -> list[tuple[str, str]]:
        return [(e.name, e.job_id) async for e in taskmesh_client.aevents(since="0", timeout=0)]

    assert asyncio.run(follow()) == [("enqueued", "j3")]
