"""The producer side: enqueue, options, dedupe, bulk enqueue, validation, status, results and the async twins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.connection

import taskmesh.default
from taskmesh import (
    Call,
    Client,
    Job,
    JobFailed,
    JobHandle,
    JobNotFound,
    JobState,
    JobTimeout,
    PayloadError,
    WorkerStats,
    default_client,
    set_default_client,
    task,
)
from taskmesh.testing import RunningWorker, drain

Drain = Callable[..., WorkerStats]
StartWorker = Callable[..., RunningWorker]
STATES = ("waiting", "delayed", "active", "completed", "failed", "cancelled")


@task
def add(x: int, y: int) -> int:
    return x + y


@task(name="demo.echo")
def echo(value: Any) -> Any:
    return value


@task(name="reports.export", queue="reports")
def export(job: Job, user_id: str) -> dict[str, str]:
    job.progress(40)
    job.log("halfway")
    return {"url": f"/reports/{user_id}.csv"}


@task
def boom(message: str) -> None:
    raise ValueError(message)


@task(name="demo.pick")
def pick(task: str) -> str:
    return task


@task
async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


ALL = [add, echo, export, boom, adouble]


def expected(**nonzero: int) -> dict[str, int]:
    """Counts per state: 0 except those given."""
    return {state: nonzero.get(state, 0) for state in STATES}


def stored_keys(client: Client) -> list[str]:
    return sorted(str(k) for k in client.redis.scan_iter(match=f"{{{client.settings.prefix}*"))


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts requests written to Redis by sync clients (a pipeline is one request)."""
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return original(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    yield sent


# -- enqueue and options ------------------------------------------------------------


def test_enqueue_returns_a_handle_on_a_waiting_job(taskmesh_client: Client) -> None:
    before = datetime.now(UTC)
    handle = add.enqueue(2, 3)
    assert isinstance(handle, JobHandle)
    assert (handle.queue, handle.created, handle.client) == ("default", True, taskmesh_client)
    status = handle.status()
    assert (status.id, status.task, status.state, status.attempts) == (handle.id, add.name, JobState.WAITING, 0)
    assert (status.progress, status.result, status.error, status.logs) == (None, None, None, [])
    assert status.created_at is not None
    assert abs(status.created_at - before) < timedelta(seconds=5)
    assert (status.started_at, status.finished_at, status.due_at) == (None, None, None)
    assert taskmesh_client.counts() == expected(waiting=1)


def test_every_enqueue_gets_a_fresh_job_id(taskmesh_client: Client) -> None:
    ids = {add.enqueue(1, 1).id for _ in range(3)}
    assert len(ids) == 3
    assert taskmesh_client.counts()["waiting"] == 3


def test_options_set_job_id_priority_and_queue(taskmesh_client: Client) -> None:
    handle = add.options(job_id="sum:1", priority=7, queue="math").enqueue(1, 2)
    assert (handle.id, handle.queue) == ("sum:1", "math")
    status = handle.status()
    assert (status.queue, status.priority, status.state) == ("math", 7, JobState.WAITING)
    assert taskmesh_client.counts("math") == expected(waiting=1)
    assert taskmesh_client.counts() == expected()


def test_delay_and_run_at_make_a_delayed_job(taskmesh_client: Client) -> None:
    delayed = add.options(delay=60).enqueue(1, 2).status()
    assert delayed.state is JobState.DELAYED
    assert delayed.due_at is not None and delayed.created_at is not None
    assert abs((delayed.due_at - delayed.created_at).total_seconds() - 60) < 0.01

    when = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    scheduled = add.options(run_at=when).enqueue(1, 2).status()
    assert (scheduled.state, scheduled.due_at) == (JobState.DELAYED, when)

    past = add.options(run_at=datetime.now(UTC) - timedelta(hours=1)).enqueue(1, 2).status()
    assert past.state is JobState.WAITING
    assert taskmesh_client.counts() == expected(waiting=1, delayed=2)


def test_enqueueing_an_existing_job_id_returns_the_existing_job(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    first = echo.options(job_id="once").enqueue("first")
    again = echo.options(job_id="once").enqueue("second")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id == "once"
    assert taskmesh_client.counts() == expected(waiting=1)
    taskmesh_drain([echo])
    assert again.result(timeout=5) == "first"
    late = taskmesh_client.submit(Call(echo.name, ["third"], job_id="once"))
    assert late.created is False
    assert late.status().result == "first"


def test_producer_enqueues_by_task_name_without_the_task(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = taskmesh_client.enqueue("demo.echo", {"a": [1, 2]})
    assert handle.status().task == "demo.echo"
    taskmesh_drain([echo])
    assert handle.result(timeout=5) == {"a": [1, 2]}


def test_task_with_a_job_parameter_is_enqueued_without_it(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = export.enqueue(user_id="u7")
    assert handle.queue == "reports"
    taskmesh_drain([export])
    assert handle.result(timeout=5) == {"url": "/reports/u7.csv"}


def test_options_client_overrides_the_default_client(taskmesh_client: Client, taskmesh_prefix: str) -> None:
    other = Client(taskmesh_client.settings.redis_url, prefix=f"{taskmesh_prefix}-other")
    try:
        handle = add.options(client=other).enqueue(1, 2)
        assert handle.client is other
        assert other.counts()["waiting"] == 1
        assert taskmesh_client.counts()["waiting"] == 0
    finally:
        other.close()


def test_a_keyword_argument_named_task_reaches_the_task(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    by_name = taskmesh_client.enqueue("demo.pick", task="t1")
    by_task = taskmesh_client.enqueue(pick, task="t2")
    taskmesh_drain([pick])
    assert (by_name.result(timeout=5), by_task.result(timeout=5)) == ("t1", "t2")


@pytest.mark.parametrize("delay", ["5", float("nan"), float("inf"), True])
def test_delay_that_is_not_a_number_of_seconds_is_refused(taskmesh_client: Client, delay: Any) -> None:
    with pytest.raises(ValueError, match="delay must be a number of seconds"):
        add.options(delay=delay).enqueue(1, 2)
    with pytest.raises(ValueError, match="delay must be a number of seconds"):
        taskmesh_client.submit(Call(add.name, [1, 2], delay=delay))
    assert stored_keys(taskmesh_client) == []


def test_negative_delay_means_now(taskmesh_client: Client) -> None:
    assert add.options(delay=-3).enqueue(1, 2).status().state is JobState.WAITING


def test_delay_or_run_at_over_ten_years_is_refused_and_nothing_written(taskmesh_client: Client) -> None:
    too_late = datetime.now(UTC) + timedelta(days=3660)
    for delay in (1e300, 10 * 366 * 24 * 3600):
        with pytest.raises(ValueError, match="delay must be at most"):
            add.options(delay=delay).enqueue(1, 2)
        with pytest.raises(ValueError, match="delay must be at most"):
            taskmesh_client.submit(Call(add.name, [1, 2], delay=delay))
    for run_at in (too_late, datetime.max.replace(tzinfo=UTC)):
        with pytest.raises(ValueError, match="run_at must be at most ten years"):
            add.options(run_at=run_at).enqueue(1, 2)
        with pytest.raises(ValueError, match="run_at must be at most ten years"):
            taskmesh_client.enqueue_many([add.call(1, 2), Call(add.name, [1, 2], run_at=run_at)])
    assert stored_keys(taskmesh_client) == []


def test_delay_of_nearly_ten_years_is_kept_and_readable(taskmesh_client: Client) -> None:
    status = add.options(delay=9 * 365 * 24 * 3600).enqueue(1, 2).status()
    assert status.state is JobState.DELAYED
    assert status.due_at is not None and status.due_at.year >= datetime.now(UTC).year + 8


def test_default_client_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskmesh.default, "_default", None)
    monkeypatch.setenv("TASKMESH_REDIS_URL", "redis://example.invalid:6390/2")
    monkeypatch.setenv("TASKMESH_PREFIX", "fromenv")
    client = default_client()
    assert (client.settings.redis_url, client.settings.prefix) == ("redis://example.invalid:6390/2", "fromenv")
    assert default_client() is client
    set_default_client(None)
    assert default_client() is not client


# -- bulk, counts, lookups ---------------------------------------------------------------


def test_enqueue_many_writes_jobs_of_two_queues_in_one_round_trip(
    taskmesh_client: Client, round_trips: list[int]
) -> None:
    taskmesh_client.enqueue(add, 0, 0)  # connection made and scripts loaded
    calls = [
        add.options(job_id="m1").call(1, 1),
        export.options(job_id="m2").call("u1"),
        add.options(job_id="m3").call(2, 2),
        export.options(job_id="m4", delay=30).call("u2"),
        add.options(job_id="m5", priority=3).call(3, 3),
    ]
    round_trips[0] = 0
    handles = taskmesh_client.enqueue_many(calls)
    assert round_trips[0] == 1
    assert [h.id for h in handles] == ["m1", "m2", "m3", "m4", "m5"]
    assert [h.queue for h in handles] == ["default", "reports", "default", "reports", "default"]
    assert all(h.created for h in handles)
    assert taskmesh_client.counts() == expected(waiting=4)
    assert taskmesh_client.counts("reports") == expected(waiting=1, delayed=1)
    assert taskmesh_client.queues() == ["default", "reports"]


def test_enqueue_many_marks_duplicates_within_and_across_batches(taskmesh_client: Client) -> None:
    add.options(job_id="d1").enqueue(0, 0)
    handles = taskmesh_client.enqueue_many(
        [add.options(job_id="d1").call(1, 1), add.options(job_id="d2").call(2, 2), add.options(job_id="d2").call(3, 3)]
    )
    assert [(h.id, h.created) for h in handles] == [("d1", False), ("d2", True), ("d2", False)]
    assert taskmesh_client.counts()["waiting"] == 2
    assert taskmesh_client.enqueue_many([]) == []


def test_counts_report_jobs_per_state(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    add.enqueue(1, 2)
    boom.enqueue("no")
    echo.options(delay=60).enqueue("later")
    assert taskmesh_client.counts() == expected(waiting=2, delayed=1)
    taskmesh_drain([add, boom, echo], raise_errors=False)
    assert taskmesh_client.counts() == expected(completed=1, failed=1, delayed=1)


def test_job_lookup_returns_a_handle_or_none(taskmesh_client: Client) -> None:
    handle = add.enqueue(1, 2)
    found = taskmesh_client.job(handle.id)
    assert found is not None
    assert (found.id, found.queue, found.created) == (handle.id, "default", False)
    assert found.status().state is JobState.WAITING
    assert taskmesh_client.job("no-such-job") is None
    assert taskmesh_client.job(handle.id, queue="elsewhere") is None
    assert taskmesh_client.status("no-such-job") is None


def test_queues_lists_the_queues_producers_used(taskmesh_client: Client) -> None:
    assert taskmesh_client.queues() == []
    add.enqueue(1, 2)
    export.enqueue("u1")
    add.options(queue="math").enqueue(1, 2)
    assert taskmesh_client.queues() == ["default", "math", "reports"]


# -- validation: nothing is written ----------------------------------------------------


@pytest.mark.parametrize(
    ("enqueue", "words"),
    [
        (lambda c: echo.enqueue(object()), r"argument 0 \(object\) is not JSON-serializable"),
        (lambda c: add.enqueue(1, {2, 3}), r"argument 1 \(set\) is not JSON-serializable"),  # type: ignore[arg-type]
        (lambda c: export.enqueue(user_id=b"u1"), r"user_id \(bytes\) is not JSON-serializable"),  # type: ignore[arg-type]
        (lambda c: c.enqueue("any.task", 1, when=datetime.now(UTC)), r"when \(datetime\)"),
        (
            lambda c: c.enqueue_many([add.call(1, 2), echo.options(queue="other").call({"k": {1j}})]),
            r"argument 0 \(dict\)",
        ),
    ],
)
def test_non_json_argument_is_a_type_error_naming_it_and_writes_nothing(
    taskmesh_client: Client, enqueue: Callable[[Client], Any], words: str
) -> None:
    with pytest.raises(TypeError, match=words):
        enqueue(taskmesh_client)
    assert stored_keys(taskmesh_client) == []


def test_async_enqueue_of_non_json_argument_writes_nothing(taskmesh_client: Client) -> None:
    async def main() -> None:
        try:
            with pytest.raises(TypeError, match="argument 0"):
                await taskmesh_client.aenqueue_many([add.call(1, 2), echo.call(object())])
            with pytest.raises(TypeError, match="argument 0"):
                await echo.aenqueue(object())
        finally:
            await taskmesh_client.aclose()

    asyncio.run(main())
    assert stored_keys(taskmesh_client) == []


def test_payload_over_the_size_limit_is_refused(taskmesh_client: Client) -> None:
    small = Client(settings=taskmesh_client.settings.replace(max_payload_bytes=100))
    try:
        small.enqueue(echo, "x" * 10)
        with pytest.raises(PayloadError, match="over the 100-byte limit"):
            small.enqueue(echo, "x" * 100)
        with pytest.raises(PayloadError):
            small.enqueue_many([echo.call("ok"), echo.call("é" * 30)])  # escaped to 6 bytes each
        assert small.counts() == expected(waiting=1)
    finally:
        small.close()


@pytest.mark.parametrize("job_id", ["a{b}", "a}", "", "x" * 300, "with space", "nul\0", "tab\t"])
def test_invalid_job_id_is_refused_and_nothing_written(taskmesh_client: Client, job_id: str) -> None:
    with pytest.raises(ValueError, match="invalid job id"):
        add.options(job_id=job_id).enqueue(1, 2)
    with pytest.raises(ValueError, match="invalid job id"):
        taskmesh_client.submit(Call(add.name, [1, 2], job_id=job_id))
    with pytest.raises(ValueError, match="invalid job id"):
        taskmesh_client.enqueue_many([add.call(1, 2), Call(add.name, [1, 2], job_id=job_id)])
    assert stored_keys(taskmesh_client) == []


@pytest.mark.parametrize("queue", ["a{b}", "", "with space", "x" * 101, "ü"])
def test_invalid_queue_name_is_refused_and_nothing_written(taskmesh_client: Client, queue: str) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        add.options(queue=queue).enqueue(1, 2)
    with pytest.raises(ValueError, match="invalid queue name"):
        taskmesh_client.enqueue_many([add.call(1, 2), Call(add.name, [1, 2], queue=queue)])
    assert stored_keys(taskmesh_client) == []


def test_invalid_task_name_or_priority_is_refused_and_nothing_written(taskmesh_client: Client) -> None:
    with pytest.raises(ValueError, match="invalid task name"):
        taskmesh_client.enqueue("no spaces please")
    with pytest.raises(ValueError, match="priority"):
        taskmesh_client.submit(Call(add.name, [1, 2], priority=1001))
    assert stored_keys(taskmesh_client) == []


@pytest.mark.parametrize("args", ["hello", b"ab", {"a": 1}], ids=["str", "bytes", "dict"])
def test_call_args_that_are_not_a_list_or_tuple_are_refused_where_the_call_is_made(args: Any) -> None:
    # Before: "hello" became five arguments, b"ab" the ints 97 and 98, a dict its keys.
    with pytest.raises(TypeError, match=r"args must be a list or tuple, not (str|bytes|dict)"):
        Call(echo.name, args)


def test_call_keyword_names_that_are_not_strings_are_refused() -> None:
    # Before: {1: "a", "1": "b"} was stored as {"1": "b"}, one argument lost.
    with pytest.raises(TypeError, match=r"keyword argument names must be strings, not int 1"):
        Call(echo.name, [], {1: "a", "1": "b"})


def _tampered(**fields: Any) -> Call:
    """A call whose fields were changed past the checks of its construction."""
    call = Call(echo.name, ["ok"])
    for name, value in fields.items():
        object.__setattr__(call, name, value)
    return call


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"args": "hello"}, TypeError, "args must be a list or tuple"),
        ({"args": b"ab"}, TypeError, "args must be a list or tuple"),
        ({"args": {"a": 1}}, TypeError, "args must be a list or tuple"),
        ({"kwargs": {1: "a", "1": "b"}}, TypeError, "keyword argument names must be strings"),
        ({"delay": 5, "run_at": datetime.now(UTC) + timedelta(hours=1)}, ValueError, "delay or run_at, not both"),
    ],
)
def test_every_enqueue_path_checks_a_call_again_and_a_bad_one_writes_nothing(
    taskmesh_client: Client, fields: dict[str, Any], error: type[Exception], words: str
) -> None:
    bad = _tampered(**fields)
    with pytest.raises(error, match=words):
        taskmesh_client.submit(bad)
    with pytest.raises(error, match=words):
        taskmesh_client.enqueue_many([add.call(1, 2), echo.options(queue="other").call("x"), bad])

    async def main() -> None:
        try:
            with pytest.raises(error, match=words):
                await taskmesh_client.aenqueue_many([add.call(1, 2), bad])
            with pytest.raises(error, match=words):
                await taskmesh_client.asubmit(bad)
        finally:
            await taskmesh_client.aclose()

    asyncio.run(main())
    assert stored_keys(taskmesh_client) == []


def test_keyword_names_reach_enqueue_only_as_strings(taskmesh_client: Client) -> None:
    # Through ``**`` Python itself refuses other keys; through a Call, the Call does (above).
    with pytest.raises(TypeError, match="must be strings"):
        taskmesh_client.enqueue(echo, **{1: "a"})  # type: ignore[misc]
    with pytest.raises(TypeError, match="must be strings"):
        echo.enqueue(**{1: "a"})  # type: ignore[misc]
    with pytest.raises(TypeError, match="must be strings"):
        echo.call(**{1: "a"})  # type: ignore[misc]
    assert echo.call(**{"1": "b"}).kwargs == {"1": "b"}
    assert stored_keys(taskmesh_client) == []


def test_delay_with_run_at_is_refused_in_every_form(taskmesh_client: Client) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(ValueError, match="delay or run_at, not both"):
        Call(add.name, [1, 2], delay=5, run_at=later)
    with pytest.raises(ValueError, match="delay or run_at, not both"):
        add.options(delay=5, run_at=later)
    assert stored_keys(taskmesh_client) == []


def test_a_run_at_without_time_zone_is_refused_and_nothing_written(taskmesh_client: Client) -> None:
    naive = datetime.now() + timedelta(hours=1)  # the mistake under test
    with pytest.raises(ValueError, match="run_at must say its time zone"):
        add.options(run_at=naive)
    with pytest.raises(ValueError, match="run_at must say its time zone"):
        taskmesh_client.submit(Call(add.name, [1, 2], run_at=naive))
    with pytest.raises(ValueError, match="run_at must say its time zone"):
        taskmesh_client.enqueue_many([add.call(1, 2), Call(add.name, [1, 2], run_at=naive)])
    assert stored_keys(taskmesh_client) == []
    later = datetime.now(UTC) + timedelta(hours=1)
    assert add.options(run_at=later).enqueue(1, 2).status().state is JobState.DELAYED


def test_repr_of_a_client_hides_the_redis_password() -> None:
    for url, secret in [("redis://app:s3cret@h:1/0", "s3cret"), ("redis://:Zq7/Xw9@h/0", "Zq7")]:
        client = Client(url, prefix="p")
        assert secret not in repr(client) and secret not in repr(client.settings)
        assert "***" in repr(client)


# -- status and results ------------------------------------------------------------------


def test_finished_job_status_has_result_progress_logs_and_timestamps(
    taskmesh_client: Client, taskmesh_drain: Drain
) -> None:
    handle = export.enqueue("u1")
    taskmesh_drain([export])
    status = handle.status()
    assert (status.state, status.attempts, status.result) == (JobState.COMPLETED, 1, {"url": "/reports/u1.csv"})
    assert (status.progress, status.logs, status.error) == (40, ["halfway"], None)
    assert status.worker
    assert status.created_at and status.started_at and status.finished_at
    assert status.created_at <= status.started_at <= status.finished_at
    assert status.to_dict()["state"] == "completed"


def test_failed_job_status_has_error_type_message_and_traceback(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = boom.enqueue("bad input")
    with pytest.raises(JobFailed):
        taskmesh_drain([boom])
    status = handle.status()
    assert (status.state, status.attempts, status.result) == (JobState.FAILED, 1, None)
    assert status.error is not None
    assert (status.error["type"], status.error["message"]) == ("ValueError", "bad input")
    assert "Traceback" in status.error["traceback"] and "raise ValueError(message)" in status.error["traceback"]
    assert status.finished_at is not None


def test_result_waits_for_a_running_worker(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    taskmesh_worker(ALL)
    assert add.enqueue(20, 22).result(timeout=5) == 42
    assert adouble.enqueue(21).result(timeout=5) == 42
    assert echo.options(delay=0.2).enqueue("late").result(timeout=5) == "late"


def test_result_of_a_failed_job_raises_job_failed_with_the_error(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    taskmesh_worker(ALL)
    handle = boom.enqueue("bad input")
    with pytest.raises(JobFailed, match="ValueError: bad input") as caught:
        handle.result(timeout=5)
    assert (caught.value.job_id, caught.value.state) == (handle.id, "failed")
    assert caught.value.error["type"] == "ValueError"
    assert "Traceback" in caught.value.error["traceback"]


def test_result_raises_job_timeout_when_nothing_runs_the_job(taskmesh_client: Client) -> None:
    handle = add.enqueue(1, 2)
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=handle.id):
        handle.result(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3
    assert handle.status().state is JobState.WAITING


def test_result_arrives_when_the_final_event_was_trimmed_before_the_waiter_read_it(
    taskmesh_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = taskmesh_client
    handle = add.enqueue(2, 3)
    read_status = client.status

    def finish_unseen(job_id: str, queue: str = "default") -> Any:
        status = read_status(job_id, queue)
        if status is not None and not status.state.finished:  # the job finishes right after the waiter's read
            drain(client, [add])
            client.redis.xtrim(client.keys(queue).events, maxlen=0, approximate=False)  # a slow reader's loss
        return status

    monkeypatch.setattr(client, "status", finish_unseen)
    started = time.monotonic()
    assert handle.result(timeout=5) == 5
    assert time.monotonic() - started < 3


def test_async_result_arrives_when_the_final_event_was_trimmed_before_the_waiter_read_it(
    taskmesh_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = taskmesh_client
    handle = add.enqueue(2, 3)
    read_status = client.astatus

    async def finish_unseen(job_id: str, queue: str = "default") -> Any:
        status = await read_status(job_id, queue)
        if status is not None and not status.state.finished:
            await asyncio.to_thread(drain, client, [add])
            client.redis.xtrim(client.keys(queue).events, maxlen=0, approximate=False)
        return status

    async def wait() -> int:
        try:
            return await handle.aresult(timeout=5)
        finally:
            await client.aclose()

    monkeypatch.setattr(client, "astatus", finish_unseen)
    started = time.monotonic()
    assert asyncio.run(wait()) == 5
    assert time.monotonic() - started < 3


def test_log_line_with_a_lone_surrogate_is_stored_with_a_replacement(
    taskmesh_client: Client, taskmesh_drain: Drain
) -> None:
    @task(name="demo.badlog")
    def bad_log(job: Job) -> str:
        job.log("bad \udcff")
        job.log("fine")
        return "done"

    handle = bad_log.enqueue()
    taskmesh_drain([bad_log])
    status = handle.status()
    assert (status.state, status.result, status.logs) == (JobState.COMPLETED, "done", ["bad ?", "fine"])


def test_result_of_an_unknown_job_raises_job_not_found(taskmesh_client: Client) -> None:
    with pytest.raises(JobNotFound, match="ghost"):
        JobHandle(taskmesh_client, "ghost", "default").result(timeout=0.1)
    with pytest.raises(JobNotFound, match="ghost"):
        JobHandle(taskmesh_client, "ghost", "default").status()


# -- asyncio twins -------------------------------------------------------------------------


def test_async_twins_enqueue_read_and_wait(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    client = taskmesh_client

    async def produce() -> None:
        try:
            handle = await add.aenqueue(2, 3)
            assert handle.created
            assert (await handle.astatus()).state is JobState.WAITING
            again = await add.options(job_id=handle.id).aenqueue(9, 9)
            assert (again.id, again.created) == (handle.id, False)
            named = await client.aenqueue("demo.echo", "by name")
            assert (await named.astatus()).task == "demo.echo"
            many = await client.aenqueue_many([export.call("u1"), adouble.call(4), export.options(delay=60).call("u2")])
            assert [h.queue for h in many] == ["reports", "default", "reports"]
            assert all(h.created for h in many)
            assert await client.acounts() == expected(waiting=3)
            assert await client.acounts("reports") == expected(waiting=1, delayed=1)
            found = await client.ajob(handle.id)
            assert found is not None and found.id == handle.id
            assert await client.ajob("no-such-job") is None
            assert await client.astatus("no-such-job") is None
            with pytest.raises(JobTimeout):
                await handle.aresult(timeout=0.2)
            with pytest.raises(JobNotFound):
                await JobHandle(client, "ghost", "default").aresult(timeout=0.1)
        finally:
            await client.aclose()

    async def consume() -> None:
        try:
            handle = await add.aenqueue(2, 3)
            assert await handle.aresult(timeout=5) == 5
            assert await (await adouble.aenqueue(5)).aresult(timeout=5) == 10
            with pytest.raises(JobFailed, match="bad input") as caught:
                await (await boom.aenqueue("bad input")).aresult(timeout=5)
            assert caught.value.error["type"] == "ValueError"
            assert (await handle.astatus()).state is JobState.COMPLETED
        finally:
            await client.aclose()

    asyncio.run(produce())
    taskmesh_worker(ALL)
    asyncio.run(consume())
