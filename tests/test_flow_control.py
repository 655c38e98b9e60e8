"""Flow control: cancellation, pause/resume, rate limits, caps on active jobs, SlowDown.

Script-level tests drive the engine directly; worker-level tests run real workers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis

from taskmesh import Client, Job, JobFailed, JobNotFound, JobState, Limit, SlowDown, task
from taskmesh.store import scripts
from taskmesh.store.connect import is_cluster
from taskmesh.store.scripts import Leased, Update
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
pytestmark = pytest.mark.also_cluster
BOUND = 10.0
FAST = {"lease_seconds": 1.0, "renew_interval": 0.1, "sweep_interval": 0.2}


def step(
    client: Client, worker: str = "w1", want: int = 1, updates: list[Update] | None = None, queue: str = "default"
) -> tuple[list[bool], list[Leased], float | None]:
    args = scripts.step_args(client.settings, worker, want, updates or [])
    return scripts.parse_step(scripts.call(client.redis, "step", client.keys(queue).all, args))


def leased_ids(client: Client, want: int, **kwargs: Any) -> list[str]:
    return [job.id for job in step(client, want=want, **kwargs)[1]]


def event_names(client: Client, job_id: str, queue: str = "default") -> list[str]:
    entries = cast(list[tuple[str, dict[str, str]]], client.redis.xrange(client.keys(queue).events))
    return [fields["event"] for _, fields in entries if fields["job"] == job_id]


# -- Limit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate", "per"),
    [
        ("100/s", 100, 1.0),
        ("100/m", 100, 60.0),
        ("5/h", 5, 3600.0),
        ("7/10s", 7, 10.0),
        ("3/500ms", 3, 0.5),
        (" 2 / d ", 2, 86400.0),
        ("4/1.5s", 4, 1.5),
    ],
)
def test_limit_parses_rates(text: str, rate: int, per: float) -> None:
    limit = Limit.parse(text)
    assert (limit.rate, limit.per, limit.max_active) == (rate, per, None)
    assert Limit.from_json(limit.to_json()) == limit


@pytest.mark.parametrize("text", ["", "100", "x/s", "0/s", "10/0s", "10/y", "10/.", "-1/s", "200000/s"])
def test_limit_refuses_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        Limit.parse(text)


def test_limit_needs_a_part_and_task_options_check_it() -> None:
    with pytest.raises(ValueError, match="needs a rate"):
        Limit()
    with pytest.raises(ValueError, match="max_active"):
        Limit(max_active=0)
    with pytest.raises(ValueError, match=r"flow\.bad"):
        task(name="flow.bad", rate_limit="lots")(lambda: None)
    capped = task(name="flow.capped", rate_limit="10/m", max_active=2)(lambda: None)
    assert capped.limit == Limit(rate=10, per=60.0, max_active=2)


# -- cancellation (engine) -----------------------------------------------------------


def test_cancel_removes_a_waiting_or_delayed_job_at_once(taskmesh_client: Client) -> None:
    waiting = taskmesh_client.enqueue("flow.noop")
    delayed = taskmesh_client.submit(flow_noop.options(delay=60).call())
    assert (waiting.cancel(), delayed.cancel()) == ("cancelled", "cancelled")

    counts = taskmesh_client.counts()
    assert (counts["waiting"], counts["delayed"], counts["cancelled"]) == (0, 0, 2)
    assert leased_ids(taskmesh_client, 5) == []
    assert waiting.status().state is JobState.CANCELLED and waiting.status().finished_at is not None
    assert event_names(taskmesh_client, waiting.id) == ["enqueued", "cancelled"]
    with pytest.raises(JobFailed, match="cancelled"):
        waiting.result(timeout=1)
    assert waiting.cancel() == "cancelled", "cancelling again changes nothing"
    assert event_names(taskmesh_client, waiting.id) == ["enqueued", "cancelled"]


def test_cancel_of_unknown_or_finished_job(taskmesh_client: Client) -> None:
    with pytest.raises(JobNotFound):
        taskmesh_client.cancel("no-such-job")
    with pytest.raises(ValueError):
        taskmesh_client.cancel("bad id")
    handle = taskmesh_client.enqueue("flow.noop")
    [job] = step(taskmesh_client)[1]
    step(taskmesh_client, want=0, updates=[Update("c", job.id, job.token, "1")])
    assert handle.cancel() == "completed"
    assert handle.status().state is JobState.COMPLETED


def test_cancel_of_an_active_job_is_reported_to_its_holder_and_ends_cancelled(taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("flow.noop")
    [job] = step(taskmesh_client)[1]
    assert handle.cancel() == "cancelling"
    assert handle.status().state is JobState.ACTIVE

    renew = scripts.renew_args(taskmesh_client.settings, [(job.id, job.token)])
    lost, cancel = scripts.parse_renew(
        scripts.call(taskmesh_client.redis, "renew", taskmesh_client.keys("default").all, renew)
    )
    assert (lost, cancel) == ([], [job.id])

    # Whatever the run reports (here: success), the job ends cancelled; the value is kept.
    accepted, _, _ = step(taskmesh_client, want=0, updates=[Update("c", job.id, job.token, "42")])
    status = handle.status()
    assert accepted == [True]
    assert (status.state, status.result) == (JobState.CANCELLED, 42)
    assert event_names(taskmesh_client, handle.id)[-2:] == ["cancelling", "cancelled"]


def test_a_cancel_requested_job_whose_worker_died_ends_cancelled_at_the_sweep(taskmesh_client: Client) -> None:
    cfg = taskmesh_client.settings.replace(lease_seconds=0.05, renew_interval=0.01)
    handle = taskmesh_client.enqueue("flow.noop")
    args = scripts.step_args(cfg, "w1", 1, [])
    scripts.call(taskmesh_client.redis, "step", taskmesh_client.keys("default").all, args)
    handle.cancel()

    def swept() -> bool:
        scripts.call(taskmesh_client.redis, "sweep", taskmesh_client.keys("default").all, scripts.sweep_args(cfg))
        return handle.status().state is JobState.CANCELLED

    wait_until(swept, timeout=5, message="expired cancel-requested job swept")
    assert taskmesh_client.counts()["waiting"] == 0


# -- pause and limits (engine) -------------------------------------------------------


def test_a_paused_queue_takes_jobs_but_leases_none_until_resumed(taskmesh_client: Client) -> None:
    taskmesh_client.pause()
    handle = taskmesh_client.enqueue("flow.noop")
    assert taskmesh_client.queue_settings().paused
    assert leased_ids(taskmesh_client, 5) == []
    taskmesh_client.redis.delete(taskmesh_client.keys("default").wakeup)

    taskmesh_client.resume()
    assert not taskmesh_client.queue_settings().paused
    assert taskmesh_client.redis.llen(taskmesh_client.keys("default").wakeup) > 0, "resume wakes idle workers"
    assert leased_ids(taskmesh_client, 5) == [handle.id]


def test_queue_max_active_caps_leases_across_workers(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=2))
    handles = [taskmesh_client.enqueue("flow.noop") for _ in range(4)]
    first = step(taskmesh_client, "w1", 5)[1]
    assert [j.id for j in first] == [h.id for h in handles[:2]]
    assert leased_ids(taskmesh_client, 5) == [], "another worker finds the cap reached"

    taskmesh_client.redis.delete(taskmesh_client.keys("default").wakeup)
    step(taskmesh_client, "w1", 0, [Update("c", first[0].id, first[0].token, "1")])
    assert taskmesh_client.redis.llen(taskmesh_client.keys("default").wakeup) > 0, "a freed slot wakes a worker"
    assert leased_ids(taskmesh_client, 5) == [handles[2].id]


def test_task_max_active_lets_other_tasks_pass(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=1), task="flow.capped")
    capped = [taskmesh_client.enqueue("flow.capped") for _ in range(3)]
    other = taskmesh_client.enqueue("flow.noop")
    first = step(taskmesh_client, "w1", 4)[1]
    assert [j.id for j in first] == [capped[0].id, other.id]
    assert leased_ids(taskmesh_client, 4) == []

    step(taskmesh_client, "w1", 0, [Update("f", first[0].id, first[0].token, "{}", -1)])
    assert leased_ids(taskmesh_client, 4) == [capped[1].id]
    running = taskmesh_client.redis.hget(
        taskmesh_client.keys("default").jobs.replace(":jobs", ":running"), "flow.capped"
    )
    assert running == "1"


def test_a_cap_set_while_jobs_run_counts_them(taskmesh_client: Client) -> None:
    handles = [taskmesh_client.enqueue("flow.capped") for _ in range(3)]
    step(taskmesh_client, "w1", 2)
    taskmesh_client.set_limit("default", Limit(max_active=2), task="flow.capped")
    assert leased_ids(taskmesh_client, 5) == []
    taskmesh_client.set_limit("default", None, task="flow.capped")
    assert leased_ids(taskmesh_client, 5) == [handles[2].id]
    assert taskmesh_client.queue_settings().task_limits == {}


def test_queue_rate_limit_says_when_to_look_again(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(rate=3, per=0.5))
    for _ in range(5):
        taskmesh_client.enqueue("flow.noop")
    _, leased, _ = step(taskmesh_client, want=10)
    _, none, retry_in = step(taskmesh_client, want=10)
    assert (len(leased), none) == (3, [])
    assert retry_in is not None and 0 < retry_in <= 0.501
    wait_until(lambda: len(step(taskmesh_client, want=10)[1]) == 2, timeout=2, message="window freed")


def test_task_rate_limit_is_per_task(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit.parse("1/m"), task="flow.capped")
    capped = [taskmesh_client.enqueue("flow.capped") for _ in range(2)]
    others = [taskmesh_client.enqueue("flow.noop") for _ in range(2)]
    _, leased, retry_in = step(taskmesh_client, want=10)
    assert [j.id for j in leased] == [capped[0].id, *(h.id for h in others)]
    _, leased, retry_in = step(taskmesh_client, want=10)
    assert leased == [] and retry_in is not None and 59 < retry_in <= 60.001
    settings = taskmesh_client.queue_settings()
    assert (settings.paused, settings.limit, settings.task_limits) == (False, None, {"flow.capped": Limit(1, 60.0)})


# -- workers ---------------------------------------------------------------------------


@task(name="flow.noop")
def flow_noop() -> None:
    return None


started = threading.Event()


@task(name="flow.waits_async")
async def waits_async() -> str:
    started.set()
    await asyncio.sleep(60)
    return "never"


@task(name="flow.waits_sync")
def waits_sync(job: Job) -> str:
    started.set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.01)
    return "never"


@pytest.mark.parametrize("waits", [waits_async, waits_sync])
def test_a_running_job_is_stopped_on_cancel_and_the_worker_goes_on(
    taskmesh_client: Client, taskmesh_worker: StartWorker, waits: Any
) -> None:
    started.clear()
    worker = taskmesh_worker([waits, flow_noop], concurrency=2, **FAST)
    handle = waits.enqueue()
    assert started.wait(BOUND)
    assert handle.cancel() == "cancelling"
    wait_until(lambda: handle.status().state is JobState.CANCELLED, timeout=BOUND, message="job cancelled")
    assert event_names(taskmesh_client, handle.id)[-2:] == ["cancelling", "cancelled"]
    assert flow_noop.enqueue().result(timeout=BOUND) is None
    assert worker.stop().cancelled == 1


calls: list[int] = []


@task(name="flow.rate_limited_api")
def rate_limited_api(job: Job) -> int:
    calls.append(job.attempt)
    if len(calls) == 1:
        raise SlowDown(0.2, "429 Too Many Requests")
    return job.attempt


def test_slow_down_defers_the_job_without_spending_an_attempt(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    calls.clear()
    worker = taskmesh_worker([rate_limited_api], idle_timeout=30)
    handle = rate_limited_api.enqueue()
    assert handle.result(timeout=BOUND) == 1, "the attempt is the first again"
    names = event_names(taskmesh_client, handle.id)
    assert names == ["enqueued", "active", "deferred", "waiting", "active", "completed"]
    assert worker.stop().deferred == 1


def test_pause_stops_leasing_and_resume_starts_it(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    taskmesh_client.pause("held")
    taskmesh_worker([flow_noop], queues=["held", "default"], idle_timeout=30)
    held = taskmesh_client.submit(flow_noop.options(queue="held").call())
    # The worker prefers "held"; a job on "default" finishing shows it looked and leased nothing there.
    assert flow_noop.enqueue().result(timeout=BOUND) is None
    assert held.status().state is JobState.WAITING
    taskmesh_client.resume("held")
    assert held.result(timeout=BOUND) is None


running_now = 0
most_at_once = 0
count_lock = threading.Lock()


@task(name="flow.capped_work", max_active=2)
async def capped_work() -> None:
    global running_now, most_at_once
    with count_lock:
        running_now += 1
        most_at_once = max(most_at_once, running_now)
    await asyncio.sleep(0.02)
    with count_lock:
        running_now -= 1


def test_max_active_holds_across_three_workers(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    global most_at_once
    most_at_once = 0
    for _ in range(3):
        taskmesh_worker([capped_work], concurrency=5, idle_timeout=30)
    handles = [capped_work.enqueue() for _ in range(30)]
    for handle in handles:
        handle.result(timeout=BOUND)
    assert most_at_once == 2


@task(name="flow.limited", rate_limit="10/s")
def limited() -> None:
    return None


def test_rate_limit_holds_across_three_workers(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    for _ in range(3):
        taskmesh_worker([limited], concurrency=10, idle_timeout=30)
    handles = [limited.enqueue() for _ in range(35)]
    for handle in handles:
        handle.result(timeout=BOUND)
    starts = sorted(round(h.status().started_at.timestamp() * 1000) for h in handles)  # type: ignore[union-attr]
    busiest = max(sum(1 for s in starts if t <= s <= t + 1000) for t in starts)
    assert busiest == 10, f"at most 10 starts in any second (window ends included), and the limit is used: {busiest}"
    assert starts[-1] - starts[0] >= 3000


def test_async_twins_cancel_pause_and_limit(taskmesh_client: Client) -> None:
    async def main() -> None:
        handle = await taskmesh_client.aenqueue("flow.noop")
        await taskmesh_client.apause()
        assert (await taskmesh_client.aqueue_settings()).paused
        await taskmesh_client.aresume()
        await taskmesh_client.aset_limit("default", Limit(max_active=1), task="flow.noop")
        settings = await taskmesh_client.aqueue_settings()
        assert (settings.paused, settings.task_limits) == (False, {"flow.noop": Limit(max_active=1)})
        assert await handle.acancel() == "cancelled"
        with pytest.raises(JobNotFound):
            await taskmesh_client.acancel("no-such-job")
        await taskmesh_client.aclose()

    asyncio.run(main())


@task(name="flow.trickle", rate_limit="1/0.5s")
def trickle() -> None:
    return None


def test_a_rate_limited_worker_waits_the_time_redis_gives_without_spinning(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    def script_calls() -> int:
        """EVALSHA calls so far, summed over every node of a cluster."""
        conn = taskmesh_client.redis
        if is_cluster(conn):
            per_node = conn.info("commandstats", target_nodes="all")  # type: ignore[call-arg]
            stats = list(per_node.values())
        else:
            stats = [conn.info("commandstats")]
        return sum(int(s.get("cmdstat_evalsha", {}).get("calls", 0)) for s in stats)

    taskmesh_worker([trickle], idle_timeout=30)
    before = script_calls()
    handles = [trickle.enqueue() for _ in range(4)]
    for handle in handles:
        handle.result(timeout=BOUND)
    calls = script_calls() - before
    assert calls >= 8, "every enqueue and every lease is a script call"
    starts = sorted(h.status().started_at.timestamp() for h in handles)  # type: ignore[union-attr]
    assert starts[-1] - starts[0] >= 1.5 - 0.002
    # 4 enqueues, about one lease per start and a few renewals and sweeps: a polling worker makes hundreds.
    assert calls <= 30, f"{calls} script calls for 4 rate-limited jobs"


def test_a_queue_cap_set_while_jobs_run_wakes_a_worker_when_one_ends(taskmesh_client: Client) -> None:
    for _ in range(3):
        taskmesh_client.enqueue("flow.noop")
    first, _ = step(taskmesh_client, want=2)[1]
    taskmesh_client.set_limit("default", Limit(max_active=2))
    wakeup = taskmesh_client.keys("default").wakeup
    taskmesh_client.redis.delete(wakeup)
    step(taskmesh_client, want=0, updates=[Update("c", first.id, first.token, "1")])
    assert taskmesh_client.redis.llen(wakeup) > 0


def test_with_task_limits_a_step_still_leases_as_many_as_asked(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=1), task="flow.elsewhere")
    taskmesh_client.enqueue_many([flow_noop.call() for _ in range(400)])
    assert len(leased_ids(taskmesh_client, 300)) == 300


def test_lengthening_a_rate_window_keeps_the_starts_already_made(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(rate=2, per=0.2))
    for _ in range(4):
        taskmesh_client.enqueue("flow.noop")
    assert len(leased_ids(taskmesh_client, 4)) == 2
    taskmesh_client.set_limit("default", Limit(rate=2, per=10))
    time.sleep(0.3)  # longer than the old window: its log would have expired
    assert leased_ids(taskmesh_client, 4) == []


def test_windows_round_up_to_whole_milliseconds() -> None:
    assert (Limit(rate=3, per=0.0025).per_ms, Limit(rate=1, per=1.0005).per_ms, Limit.parse("1/s").per_ms) == (
        3,
        1001,
        1000,
    )


def test_a_malformed_stored_limit_is_ignored_and_refused_by_control(taskmesh_client: Client) -> None:
    meta = taskmesh_client.keys("default").meta
    taskmesh_client.redis.hset(meta, mapping={"limit:flow.noop": '{"rate":5}', "limit:": '{"max":null}'})
    handle = taskmesh_client.enqueue("flow.noop")
    assert leased_ids(taskmesh_client, 5) == [handle.id], "a hand-written, malformed limit stops nothing"
    keys = taskmesh_client.keys("default").all
    with pytest.raises(redis.exceptions.ResponseError, match="invalid limit"):
        scripts.call(taskmesh_client.redis, "control", keys, [1000, "limit", "", '{"rate":0,"per":10}'])


def test_waiting_ids_without_a_record_are_dropped_by_a_limited_lease(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=5), task="flow.noop")
    taskmesh_client.redis.zadd(taskmesh_client.keys("default").waiting, {"ghost": -(2**50)})
    handle = taskmesh_client.enqueue("flow.noop")
    assert leased_ids(taskmesh_client, 5) == [handle.id]
    assert taskmesh_client.counts()["waiting"] == 0


def test_drain_waits_out_a_rate_limit(taskmesh_client: Client, taskmesh_drain: Callable[..., Any]) -> None:
    handles = [trickle.enqueue() for _ in range(3)]
    stats = taskmesh_drain([trickle], timeout=BOUND)
    assert stats.completed == 3
    assert all(h.status().state is JobState.COMPLETED for h in handles)
