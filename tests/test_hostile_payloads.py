"""Payloads, results and progress values that could exhaust a reader's stack are refused where they are
made, and a stored payload that holds anything at all fails its own job only."""

from __future__ import annotations

import json
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
