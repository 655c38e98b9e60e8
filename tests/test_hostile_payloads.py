"""Payloads, results and progress values that could exhaust a reader's stack are refused where they are
made, payloads over ``max_payload_bytes`` too (to the byte), and a stored payload that holds anything at all
fails its own job only."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskmesh import Call, Client, Job, JobState, PayloadError, task
from taskmesh.job import MAX_JSON_DEPTH, decode_payload, encode_payload, json_too_deep
from taskmesh.testing import drain


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@task(name="hostile.echo")
def echo(value: Any = None) -> Any:
    return "ok"


@task(name="hostile.deep_result")
def deep_result() -> Any:
    return nested(MAX_JSON_DEPTH + 5)


@task(name="hostile.deep_progress")
def deep_progress(job: Job) -> str:
    try:
        job.progress({"tree": nested(MAX_JSON_DEPTH + 5)})
    except PayloadError as exc:
        return str(exc)
    return "accepted"


def test_the_depth_check_counts_nesting_outside_strings_only() -> None:
    assert not json_too_deep(json.dumps(nested(MAX_JSON_DEPTH - 1)))
    assert json_too_deep(json.dumps(nested(MAX_JSON_DEPTH + 1)))
    assert not json_too_deep(json.dumps(["[" * 500, {"k": "{" * 500}, '\\"[[[' * 100]))
    assert json_too_deep(json.dumps({"a": [{"b": nested(MAX_JSON_DEPTH)}]}))
    assert not json_too_deep(json.dumps([{"id": i, "tags": ["a", "b"]} for i in range(1000)]))


def test_a_deeply_nested_argument_is_refused_at_enqueue(taskmesh_client: Client) -> None:
    with pytest.raises(PayloadError, match="nested deeper than"):
        echo.enqueue(nested(990))
    with pytest.raises(PayloadError, match="nested deeper than"):
        taskmesh_client.enqueue_many([Call("hostile.echo", [nested(MAX_JSON_DEPTH + 1)])])
    with pytest.raises(PayloadError, match="nested deeper than"):  # deeper than the encoder's own stack
        echo.enqueue(nested(100_000))
    assert taskmesh_client.counts()["waiting"] == 0
    assert echo.enqueue(nested(MAX_JSON_DEPTH - 5)).created


@pytest.mark.parametrize(
    "payload",
    [
        '{"t":"hostile.echo","a":[' + "[" * 990 + "]" * 990 + '],"k":{}}',  # the stack-exhausting one
        "[" * 200_000,
        '"just a string"',
        "[1, 2]",
        "not json at all",
        '{"t":"hostile.echo","a":{},"k":[]}',
        '{"t":"hostile.echo"}',
        "\udcff\x00",
    ],
)
def test_a_stored_payload_that_holds_anything_fails_its_own_job_only(taskmesh_client: Client, payload: str) -> None:
    before = echo.enqueue(1)
    bad = echo.enqueue(2)
    after = echo.enqueue(3)
    raw = payload.encode("utf-8", "surrogateescape")
    taskmesh_client.redis.hset(taskmesh_client.keys("default").payloads, bad.id, raw)
    stats = drain(taskmesh_client, [echo], concurrency=3, raise_errors=False)
    status = bad.status()
    assert (status.state, (status.error or {}).get("type")) == (JobState.FAILED, "PayloadError")
    assert status.attempts == 1  # failed at once, not retried
    assert (before.result(timeout=2), after.result(timeout=2), stats.completed) == ("ok", "ok", 2)


def test_decode_payload_raises_only_payload_errors() -> None:
    assert decode_payload(encode_payload("t", [1], {"x": 2}, 1000), "j1") == ("t", [1], {"x": 2})
    for raw in ("", "null", "[" * 5000, '{"t": 1, "a": [], "k": {}}', '{"t": "t", "a": [], "k": {}, ' * 3):
        with pytest.raises(PayloadError):
            decode_payload(raw, "j1")


def test_a_result_or_progress_nested_too_deep_fails_cleanly(taskmesh_client: Client) -> None:
    result, progress = deep_result.enqueue(), deep_progress.enqueue()
    drain(taskmesh_client, [deep_result, deep_progress], raise_errors=False)
    status = result.status()
    assert status.state is JobState.FAILED
    assert "nested deeper than" in (status.error or {}).get("message", "")
    assert "nested deeper than" in progress.result(timeout=2)


LIMIT = 1_000


def payload_bytes(arg: str) -> int:
    """The size of the payload of ``echo(arg)``."""
    return len(encode_payload(echo.name, [arg], {}, sys.maxsize))


#: The exact-size argument: ``echo(FITS)`` has a payload of exactly LIMIT bytes.
FITS = "x" * (LIMIT - payload_bytes(""))


async def aenqueue(client: Client, arg: str) -> None:
    try:
        await client.aenqueue(echo, arg)
    finally:
        await client.aclose()


#: Every way a producer makes a payload: the job's, or a schedule's scheduled run's.
ROUTES: dict[str, Callable[[Client, str], object]] = {
    "enqueue": lambda client, arg: client.enqueue(echo, arg),
    "submit": lambda client, arg: client.submit(echo.call(arg)),
    "enqueue_many": lambda client, arg: client.enqueue_many([echo.call(arg)]),
    "aenqueue": lambda client, arg: asyncio.run(aenqueue(client, arg)),
    "schedule": lambda client, arg: client.schedule("sized", echo, every=60, args=[arg]),
}


@pytest.fixture
def limited(taskmesh_client: Client) -> Iterator[Client]:
    client = Client(settings=taskmesh_client.settings.replace(max_payload_bytes=LIMIT))
    yield client
    client.close()


def written(client: Client) -> int:
    return client.counts()["waiting"] + len(client.schedules())


@pytest.mark.parametrize("route", ROUTES)
def test_a_payload_of_exactly_max_payload_bytes_is_accepted_and_one_byte_more_refused(
    limited: Client, route: str
) -> None:
    assert payload_bytes(FITS) == LIMIT
    with pytest.raises(PayloadError, match=f"payload is {LIMIT + 1} bytes, over the {LIMIT}-byte limit"):
        ROUTES[route](limited, FITS + "x")
    assert written(limited) == 0
    ROUTES[route](limited, FITS)
    assert written(limited) == 1


def test_a_stored_schedule_of_exactly_max_payload_bytes_fires_and_one_byte_more_is_skipped(limited: Client) -> None:
    roomier = Client(settings=limited.settings.replace(max_payload_bytes=LIMIT + 1))
    try:
        roomier.schedule("fits", echo, every=60, args=[FITS])
        roomier.schedule("over", echo, every=60, args=[FITS + "x"])
    finally:
        roomier.close()
    info = {i.entry.name: i for i in limited.schedules()}
    assert info["fits"].skipped is None and info["fits"].next_tick is not None
    assert f"payload is {LIMIT + 1} bytes, over the {LIMIT}-byte limit" in (info["over"].skipped or "")
