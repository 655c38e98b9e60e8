"""The inline runner: sync task bodies on the runner's own daemon threads, results handed back to the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest

from taskmesh import Client, Job, JobFailed, JobState, Settings, WorkerStats, task
from taskmesh.runners.inline import InlineRunner
from taskmesh.testing import RunningWorker

Drain = Callable[..., WorkerStats]
StartWorker = Callable[..., RunningWorker]
NO_JOB = cast(Job, None)  # the inline runner never looks at the job
BOUND = 5.0  # every blocking wait in these tests gives up after this long

release = threading.Event()
entered = threading.Event()
ran: list[str] = []
holders: list[threading.Thread] = []  # the threads ``blocked`` ran on


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    release.clear()
    entered.clear()
    ran.clear()
    holders.clear()
    yield
    release.set()  # never leave a task thread blocked behind a test (or let it write into the next one)
    for thread in holders:
        thread.join(BOUND)


@task(name="inline.echo")
def echo(value: Any) -> Any:
    return value


@task(name="inline.square")
def square(x: int) -> int:
    return x * x


@task(name="inline.broken")
def broken(x: int) -> None:
    raise ValueError(f"cannot handle {x}")


@task(name="inline.exhausted")
def exhausted() -> None:
    next(iter([]))


def block(label: str) -> str:
    """Run until ``release`` is set (bounded); record that it started, where, and that it returned."""
    ran.append(f"{label} started")
    holders.append(threading.current_thread())
    entered.set()
    released = release.wait(BOUND)
    ran.append(f"{label} returned")
    return f"{label} released" if released else f"{label} gave up"


@task(name="inline.blocked")
def blocked(label: str) -> str:
    return block(label)


@task(name="inline.blocked_attempt")
def blocked_attempt(job: Job) -> str:
    return block(f"attempt {job.attempt}")


@task(name="inline.blocked_with_timeout", timeout=0.1)
def blocked_with_timeout() -> str:
    return block("timed out")


@task(name="inline.attempt_of")
def attempt_of(job: Job, word: str, suffix: str = "") -> str:
    return f"{word} {job.attempt}{suffix}"


@task(name="inline.async_attempt_of")
async def async_attempt_of(job: Job, word: str) -> str:
    return f"{word} {job.attempt}"


@task(name="inline.releaser")
async def releaser() -> None:
    release.set()


@task(name="inline.whereami")
def whereami() -> tuple[str, bool]:
    thread = threading.current_thread()
    return thread.name, thread.daemon


@task(name="inline.current_thread")
def current_thread() -> threading.Thread:
    return threading.current_thread()


def run_loop(main: Callable[[InlineRunner], Awaitable[None]], concurrency: int) -> list[dict[str, Any]]:
    """Run ``main(runner)`` on a fresh loop, close the runner, and return what the loop reported as errors."""
    errors: list[dict[str, Any]] = []

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        runner = InlineRunner(Settings(concurrency=concurrency))
        try:
            await main(runner)
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(body(), BOUND * 2))
    return errors


def call(runner: InlineRunner, t: Any, *args: Any) -> Awaitable[Any]:
    return runner.run(t, NO_JOB, args, {})


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- the runner on its own -------------------------------------------------------


def test_sync_call_returns_its_result_and_raises_its_error_in_the_awaiting_coroutine() -> None:
    async def main(runner: InlineRunner) -> None:
        assert await call(runner, square, 7) == 49
        with pytest.raises(ValueError, match="cannot handle 3"):
            await call(runner, broken, 3)
        assert await call(runner, echo, {"a": [1]}) == {"a": [1]}

    assert run_loop(main, concurrency=2) == []


def test_the_runner_hands_the_job_first_to_a_task_that_takes_it_and_the_args_alone_to_one_that_does_not() -> None:
    job = Job("j1", "default", attempt_of.name, 3, 7)

    async def main(runner: InlineRunner) -> None:
        assert await runner.run(attempt_of, job, ["x"], {"suffix": "!"}) == "x 3!"
        assert await runner.run(async_attempt_of, job, ["y"], {}) == "y 3"
        assert await runner.run(square, job, [4], {}) == 16

    assert run_loop(main, concurrency=2) == []


def test_many_concurrent_sync_calls_each_get_their_own_result() -> None:
    async def main(runner: InlineRunner) -> None:
        results = await asyncio.gather(*(call(runner, square, i) for i in range(2000)))
        assert results == [i * i for i in range(2000)]

    assert run_loop(main, concurrency=8) == []


def test_abandoned_call_frees_its_slot_and_its_thread_exits_once_the_body_returns() -> None:
    async def main(runner: InlineRunner) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(runner, blocked, "a"), 0.05)
        assert entered.is_set() and ran == ["a started"]
        # The only slot's call is abandoned: a new call gets a thread of its own while "a" still blocks.
        assert await call(runner, square, 5) == 25
        assert ran == ["a started"]
        [abandoned] = holders
        release.set()
        await asyncio.to_thread(abandoned.join, BOUND)
        assert not abandoned.is_alive(), "the extra thread's slot goes back once the abandoned body returns"
        assert ran == ["a started", "a returned"]
        assert await call(runner, square, 6) == 36

    assert run_loop(main, concurrency=1) == [], "a late result must be dropped quietly"


def test_call_cancelled_before_a_thread_takes_it_never_runs() -> None:
    async def main(runner: InlineRunner) -> None:
        first = asyncio.ensure_future(call(runner, blocked, "a"))
        await until(entered.is_set)
        queued = asyncio.ensure_future(call(runner, blocked, "b"))
        await asyncio.sleep(0)  # one loop turn: the new task puts its call on the queue behind "a"
        queued.cancel()
        release.set()
        assert await first == "a released"
        assert await call(runner, square, 3) == 9
        assert queued.cancelled()
        assert ran == ["a started", "a returned"]

    assert run_loop(main, concurrency=1) == []


def test_close_returns_at_once_idle_threads_exit_and_a_busy_one_exits_after_its_call() -> None:
    idle: list[threading.Thread] = []

    async def main(runner: InlineRunner) -> None:
        busy = asyncio.ensure_future(call(runner, blocked, "a"))
        await until(entered.is_set)
        idle.append(await call(runner, current_thread))  # the busy thread cannot take it: a second one starts
        busy.cancel()
        started = time.monotonic()
        await runner.close()
        assert time.monotonic() - started < 0.5
        with pytest.raises(RuntimeError, match="closed"):
            await call(runner, square, 2)

    run_loop(main, concurrency=2)
    [busy_thread], [idle_thread] = holders, idle
    assert busy_thread is not idle_thread
    assert [t.name.startswith("taskmesh-task-") and t.daemon for t in (busy_thread, idle_thread)] == [True, True]
    idle_thread.join(BOUND)
    assert not idle_thread.is_alive(), "an idle thread exits at close"
    assert busy_thread.is_alive() and ran == ["a started"], "the busy thread still runs the abandoned call"
    release.set()
    busy_thread.join(BOUND)
    assert not busy_thread.is_alive()
    assert ran == ["a started", "a returned"]


# -- through a worker --------------------------------------------------------------


def test_sync_results_and_errors_come_back_through_a_worker(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    ok = echo.enqueue({"n": 1})
    bad = broken.enqueue(4)
    stats = taskmesh_drain([echo, broken], raise_errors=False)
    assert (stats.completed, stats.failed) == (1, 1)
    assert ok.result(timeout=BOUND) == {"n": 1}
    with pytest.raises(JobFailed, match="ValueError: cannot handle 4"):
        bad.result(timeout=BOUND)


def test_many_sync_jobs_all_complete_with_their_own_results(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handles = taskmesh_client.enqueue_many([square.call(i) for i in range(300)])
    stats = taskmesh_drain([square], concurrency=10)
    assert stats.completed == 300
    assert [h.result(timeout=BOUND) for h in handles] == [i * i for i in range(300)]


def test_sync_tasks_run_on_named_daemon_threads(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    handle = whereami.enqueue()
    taskmesh_drain([whereami])
    name, daemon = handle.result(timeout=BOUND)
    assert name.startswith("taskmesh-task-") and daemon


def test_sync_task_raising_stopiteration_fails_instead_of_hanging(
    taskmesh_client: Client, taskmesh_drain: Drain
) -> None:
    handle = exhausted.enqueue()
    with pytest.raises(JobFailed, match="RuntimeError: the task raised StopIteration"):
        taskmesh_drain([exhausted], timeout=BOUND)
    assert handle.status().state is JobState.FAILED


def test_blocked_sync_task_does_not_block_the_event_loop(taskmesh_client: Client, taskmesh_drain: Drain) -> None:
    waiting = blocked.enqueue("sync")
    releaser.enqueue()  # an async task: it can only run while the loop is free
    taskmesh_drain([blocked, releaser], concurrency=2)
    assert waiting.result(timeout=BOUND) == "sync released"


def test_sync_job_runs_promptly_while_a_timed_out_sync_body_still_blocks_the_only_slot(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    taskmesh_worker([blocked_with_timeout, square], concurrency=1)
    stuck = blocked_with_timeout.enqueue()
    with pytest.raises(JobFailed, match="timeout"):
        stuck.result(timeout=BOUND)
    nxt = square.enqueue(6)
    assert nxt.result(timeout=2.0) == 36
    assert ran == ["timed out started"], "the timed-out body is still blocked (released at teardown)"
    assert stuck.status().state is JobState.FAILED


def test_stopping_worker_hands_back_a_blocked_sync_job_without_waiting_for_it_or_spending_an_attempt(
    taskmesh_client: Client, taskmesh_worker: StartWorker, taskmesh_drain: Drain
) -> None:
    worker = taskmesh_worker([blocked_attempt], concurrency=1, grace_period=0.1)
    handle = blocked_attempt.enqueue()
    assert entered.wait(BOUND)
    started = time.monotonic()
    stats = worker.stop(timeout=BOUND)
    assert time.monotonic() - started < 2.0
    assert stats.released == 1
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.WAITING, 0), "a hand-back spends no attempt"
    assert ran == ["attempt 1 started"], "the body is still running on its daemon thread"

    release.set()
    holders[0].join(BOUND)  # the abandoned body returns; its outcome is dropped
    taskmesh_drain([blocked_attempt])
    assert handle.result(timeout=BOUND) == "attempt 1 released", "the run after a hand-back is still the first attempt"
    assert handle.status().attempts == 1
    assert ran == ["attempt 1 started", "attempt 1 returned", "attempt 1 started", "attempt 1 returned"]
