"""A job record the scripts cannot read fails its own job, with a reason, and never takes another job or the
queue down with it: Redis does not roll back a script that fails half-way, so every script checks what it
reads before the first write that depends on it."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import pytest

from taskmesh import Call, Client, JobState, Limit, task
from taskmesh.errors import CorruptRecord
from taskmesh.store import scripts
from taskmesh.testing import drain, running_worker, wait_until

FAST = {"lease_seconds": 0.5, "renew_interval": 0.15, "sweep_interval": 0.1}

#: Records no script wrote: not JSON, cut short, a JSON value of another shape, fields of the wrong type.
CORRUPT = [
    '{"task":"hostile.work","prio":0,"attempt":0,"sta',
    "[1, 2, 3]",
    '"waiting"',
    '{"task":"hostile.work","prio":0,"attempt":"0","stalls":0,"state":"waiting"}',
    '{"task":"hostile.work","prio":"high","attempt":0,"stalls":0,"state":"waiting"}',
    '{"task":["hostile.work"],"prio":0,"attempt":0,"stalls":0,"state":"waiting"}',
    '{"task":"hostile.work","prio":0,"attempt":0,"stalls":0,"state":"running"}',
    '{"task":"hostile.work","prio":0,"attempt":0,"stalls":0,"state":"waiting","logs":{"1":2}}',
    '{"task":"hostile.work","prio":0,"attempt":1e999,"stalls":0,"state":"waiting"}',
    "\xff\xfe not even text",
]


@task(name="hostile.work")
def work(n: int) -> int:
    return n


def corrupt(client: Client, job_id: str, raw: str, queue: str = "default") -> None:
    client.redis.hset(client.keys(queue).jobs, job_id, raw.encode("latin-1"))


def server_now(client: Client) -> datetime:
    seconds, micros = client.redis.time()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


def assert_contained(client: Client, job_id: str, queue: str = "default") -> None:
    """The bad job ended failed, with a reason, and sits in no other state set."""
    status = client.status(job_id, queue)
    assert status is not None and status.state is JobState.FAILED
    assert (status.error or {}).get("type") == "CorruptRecord"
    assert "could not be read" in (status.error or {}).get("message", "")
    keys = client.keys(queue)
    for state in ("waiting", "delayed", "active", "completed", "cancelled"):
        assert client.redis.zscore(getattr(keys, state), job_id) is None, state
    assert client.redis.zscore(keys.failed, job_id) is not None


@pytest.mark.parametrize("raw", CORRUPT)
def test_a_corrupt_record_at_the_head_of_waiting_fails_alone(taskmesh_client: Client, raw: str) -> None:
    bad = work.enqueue(-1)
    good = [work.enqueue(i) for i in range(30)]
    corrupt(taskmesh_client, bad.id, raw)
    stats = drain(taskmesh_client, [work], concurrency=10, raise_errors=False)
    assert [h.result(timeout=2) for h in good] == list(range(30))
    assert stats.completed == 30
    assert_contained(taskmesh_client, bad.id)
    assert taskmesh_client.counts() == {
        "waiting": 0, "delayed": 0, "active": 0, "completed": 30, "failed": 1, "cancelled": 0
    }


def test_a_corrupt_record_at_the_head_of_waiting_with_limits_set(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=5), task="hostile.work")
    taskmesh_client.set_limit("default", Limit(rate=1000, per=1))
    bad = work.enqueue(-1)
    good = [work.enqueue(i) for i in range(12)]
    corrupt(taskmesh_client, bad.id, CORRUPT[0])
    drain(taskmesh_client, [work], concurrency=10, raise_errors=False)
    assert [h.result(timeout=2) for h in good] == list(range(12))
    assert_contained(taskmesh_client, bad.id)
    # The cap's running count is intact: every job left 'active', so none is counted.
    running = taskmesh_client.redis.hget(f"{{{taskmesh_client.settings.prefix}:default}}:running", "hostile.work")
    assert int(running) == 0


def test_a_corrupt_record_on_a_due_delayed_job_does_not_stop_the_queue(taskmesh_client: Client) -> None:
    bad = work.options(delay=0.01).enqueue(-1)
    later = work.options(delay=0.01).enqueue(1)
    now = work.enqueue(2)
    corrupt(taskmesh_client, bad.id, CORRUPT[3])
    due = later.status().due_at
    assert due is not None
    wait_until(lambda: server_now(taskmesh_client) >= due, timeout=2, message="the delayed jobs are due")
    stats = drain(taskmesh_client, [work], raise_errors=False)
    assert (later.result(timeout=2), now.result(timeout=2), stats.completed) == (1, 2, 2)
    assert_contained(taskmesh_client, bad.id)


def test_a_corrupt_record_among_a_dead_workers_jobs_lets_the_sweep_recover_the_rest(taskmesh_client: Client) -> None:
    handles = [work.enqueue(i) for i in range(6)]
    keys = taskmesh_client.keys("default")
    dead = taskmesh_client.settings.replace(lease_seconds=0.2, renew_interval=0.1)
    leased = scripts.call(taskmesh_client.redis, "step", keys.all, scripts.step_args(dead, "dead-worker", 6, []))
    assert len(leased[1]) == 6  # a worker leased them all, then died
    corrupt(taskmesh_client, handles[2].id, CORRUPT[1])
    with running_worker(taskmesh_client, [work], **FAST):
        for i, handle in enumerate(handles):
            if i != 2:
                assert handle.result(timeout=10) == i
    assert_contained(taskmesh_client, handles[2].id)
    assert taskmesh_client.counts()["active"] == 0


def test_a_record_corrupted_while_its_job_runs_fails_that_job_and_the_worker_goes_on(taskmesh_client: Client) -> None:
    started, release = threading.Event(), threading.Event()

    @task(name="hostile.slow")
    def slow() -> str:
        started.set()
        release.wait(10)
        return "done"

    victim = slow.enqueue()
    with running_worker(taskmesh_client, [slow, work], **FAST) as running:
        assert started.wait(5)
        corrupt(taskmesh_client, victim.id, CORRUPT[4])
        release.set()
        after = work.enqueue(7)
        assert after.result(timeout=5) == 7
        wait_until(lambda: running.worker.stats.refused >= 1, timeout=5, message="the outcome refused")
    assert_contained(taskmesh_client, victim.id)


def test_enqueue_onto_an_id_whose_record_is_corrupt_creates_nothing(taskmesh_client: Client) -> None:
    handle = work.options(job_id="fixed-id").enqueue(1)
    corrupt(taskmesh_client, handle.id, CORRUPT[0])
    again = work.options(job_id="fixed-id").enqueue(2)
    assert not again.created
    assert taskmesh_client.counts()["waiting"] == 1  # the one entry from the first enqueue


@pytest.mark.parametrize("raw", CORRUPT, ids=range(len(CORRUPT)))
def test_a_batch_holding_an_id_whose_record_is_corrupt_queues_the_others(taskmesh_client: Client, raw: str) -> None:
    corrupt(taskmesh_client, "taken", raw)
    taken, fresh = taskmesh_client.enqueue_many([work.options(job_id="taken").call(1), work.call(2)])
    assert (taken.created, fresh.created) == (False, True)
    assert taskmesh_client.redis.hget(taskmesh_client.keys("default").jobs, "taken") == raw.encode("latin-1").decode(
        "utf-8", "replace"
    ), "the unreadable record is left as it was"
    assert taskmesh_client.counts()["waiting"] == 1


def test_a_garbage_running_count_starts_again_instead_of_failing_every_finish(taskmesh_client: Client) -> None:
    taskmesh_client.set_limit("default", Limit(max_active=2), task="hostile.work")
    handles = [work.enqueue(i) for i in range(4)]
    running_key = f"{{{taskmesh_client.settings.prefix}:default}}:running"

    leased = scripts.call(
        taskmesh_client.redis,
        "step",
        taskmesh_client.keys("default").all,
        scripts.step_args(taskmesh_client.settings, "w1", 4, []),
    )
    assert len(leased[1]) == 2  # the cap
    taskmesh_client.redis.hset(running_key, "hostile.work", "not a number")
    updates = [scripts.Update("c", str(j[0]), int(j[1]), "1") for j in leased[1]]
    result = scripts.call(
        taskmesh_client.redis,
        "step",
        taskmesh_client.keys("default").all,
        scripts.step_args(taskmesh_client.settings, "w1", 0, updates),
    )
    assert [int(flag) for flag in result[0]] == [1, 1]
    drain(taskmesh_client, [work])
    assert [h.status().state for h in handles] == [JobState.COMPLETED] * 4


def test_a_status_read_of_a_corrupt_record_is_a_clear_error(taskmesh_client: Client) -> None:
    handle = work.enqueue(1)
    corrupt(taskmesh_client, handle.id, CORRUPT[0])
    with pytest.raises(CorruptRecord, match=handle.id):
        handle.status()


def test_a_step_refused_for_good_backs_off_and_logs_once(
    taskmesh_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskmesh")
    broken, fine = taskmesh_client.keys("broken"), taskmesh_client.keys("fine")
    taskmesh_client.redis.set(broken.meta, "a string where a hash should be")
    info = taskmesh_client.redis.info("commandstats")
    calls_before = info.get("cmdstat_evalsha", {}).get("calls", 0)
    handle = taskmesh_client.submit(Call("hostile.work", [5], queue="fine"))
    with running_worker(taskmesh_client, [work], queues=("broken", "fine"), **FAST) as running:
        assert handle.result(timeout=5) == 5  # the other queue keeps moving
        queue = next(q for q in running.worker._inflight.queues if q.keys.queue == "broken")
        wait_until(lambda: queue.refused.failures >= 6, timeout=10, message="six refused steps")
        failures = queue.refused.failures
        calls = taskmesh_client.redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls_before
        # Backed off: a few calls per failure (a step, the check of an empty step), not thousands.
        assert calls < 10 * failures + 200, (calls, failures)
        refusals = [r for r in caplog.records if "Redis refuses the worker's step" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert "WRONGTYPE" in refusals[0].getMessage()
        taskmesh_client.redis.delete(broken.meta)
        late = taskmesh_client.submit(Call("hostile.work", [6], queue="broken"))
        assert late.result(timeout=10) == 6
    assert any("working again" in r.getMessage() for r in caplog.records)
    assert fine.queue == "fine"


def test_a_stream_whose_ids_are_used_up_loses_events_not_jobs(
    taskmesh_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Events announce changes already made: a refused one (here the stream's last possible id is taken)
    is lost, logged once, and turns no change into an error."""
    caplog.set_level(logging.WARNING, logger="taskmesh")
    stream = taskmesh_client.keys("default").events
    taskmesh_client.redis.xadd(stream, {"event": "x", "job": ""}, id="18446744073709551615-18446744073709551615")
    handles = [work.enqueue(i) for i in range(5)]  # enqueue is not refused
    with running_worker(taskmesh_client, [work], **FAST):
        assert [h.result(timeout=10) for h in handles] == list(range(5))
    assert [h.status().attempts for h in handles] == [1] * 5
    refusals = [r.getMessage() for r in caplog.records if "Redis refuses the events" in r.getMessage()]
    assert len(refusals) == 1 and "exhausted" in refusals[0], refusals  # once for the streak, not per step


def test_retention_never_forgets_a_live_job_through_a_stray_id_in_a_final_set(taskmesh_client: Client) -> None:
    live = work.options(delay=3600).enqueue(-1)
    taskmesh_client.redis.zadd(taskmesh_client.keys("default").completed, {live.id: 1})  # the oldest entry
    handles = [work.enqueue(i) for i in range(10)]
    drain(taskmesh_client, [work], completed_keep=5)
    assert len([h for h in handles if taskmesh_client.status(h.id) is not None]) == 5  # the other five trimmed
    assert taskmesh_client.redis.zscore(taskmesh_client.keys("default").completed, live.id) is None
    status = live.status()
    assert status.state is JobState.DELAYED  # its record and payload are still there
    assert taskmesh_client.redis.hexists(taskmesh_client.keys("default").payloads, live.id)


def test_a_lease_refused_part_way_records_the_outcomes_once_and_backs_off(
    taskmesh_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A running count of the wrong type stops the lease of a capped task; the results sent in the same step
    are recorded once (no log line twice), the worker logs the streak once, and leases again once it is fixed."""
    caplog.set_level(logging.INFO, logger="taskmesh")
    started, release = threading.Event(), threading.Event()

    @task(name="hostile.logs", max_active=5)
    def logs(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    running_key = f"{{{taskmesh_client.settings.prefix}:default}}:running"
    first = logs.enqueue(1)
    with running_worker(taskmesh_client, [logs], **FAST) as running:
        assert started.wait(5)
        taskmesh_client.redis.delete(running_key)
        taskmesh_client.redis.set(running_key, "not a hash")
        later = logs.enqueue(2)
        release.set()
        assert first.result(timeout=5) == 1
        queue = running.worker._inflight.queues[0]
        wait_until(lambda: queue.leasing.failures >= 2, timeout=10, message="refused leases")
        assert later.status().state is JobState.WAITING
        taskmesh_client.redis.delete(running_key)
        assert later.result(timeout=10) == 2
    lines = [r.getMessage() for r in caplog.records if "nothing can be leased" in r.getMessage()]
    assert len(lines) == 2 and "WRONGTYPE" in lines[0] and "working again" in lines[1], lines
    assert running.worker.stats.refused == 0


def test_a_worker_stopping_while_redis_refuses_its_outcomes_keeps_trying_them_for_the_grace_period(
    taskmesh_client: Client,
) -> None:
    runs: list[int] = []

    @task(name="hostile.counted")
    def counted(n: int) -> int:
        runs.append(n)
        return n

    completed = taskmesh_client.keys("default").completed
    with running_worker(taskmesh_client, [counted], grace_period=10, **FAST) as running:
        taskmesh_client.redis.set(completed, "not a zset")  # every result is refused for now
        handles = [counted.enqueue(i) for i in range(3)]
        queue = running.worker._inflight.queues[0]
        wait_until(lambda: len(queue.updates) == 3, timeout=10, message="three outcomes kept")
        stopping = threading.Thread(target=running.stop)
        stopping.start()
        wait_until(lambda: running.worker._inflight.stopping, timeout=5, message="the worker stopping")
        taskmesh_client.redis.delete(completed)  # repaired within the grace period
        stopping.join(15)
    assert [h.status().state for h in handles] == [JobState.COMPLETED] * 3
    assert sorted(runs) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["string", "list"])
def test_the_never_key_of_any_type_breaks_nothing(taskmesh_client: Client, kind: str) -> None:
    never = f"{{{taskmesh_client.settings.prefix}:default}}:never"
    if kind == "string":
        taskmesh_client.redis.set(never, "x")
    else:
        taskmesh_client.redis.rpush(never, "x")
    handles = [work.enqueue(i) for i in range(3)]
    drain(taskmesh_client, [work])
    assert [h.result(timeout=2) for h in handles] == [0, 1, 2]
    assert work.enqueue(9).cancel() == "cancelled"
    taskmesh_client.pause("default")
    taskmesh_client.resume("default")
    assert taskmesh_client.redis.type(never) == kind and (kind == "string" or taskmesh_client.redis.llen(never) == 1)


def test_a_stored_limit_the_workers_would_not_enforce_is_reported_and_ignored(taskmesh_client: Client) -> None:
    taskmesh_client.redis.hset(taskmesh_client.keys("default").meta, "limit:", '{"rate":10,"per":1e19}')
    handles = [work.enqueue(i) for i in range(3)]
    drain(taskmesh_client, [work])
    assert [h.result(timeout=2) for h in handles] == [0, 1, 2]
    assert "" in taskmesh_client.queue_settings("default").invalid


@pytest.mark.parametrize(
    "field", ['"error":"[1]"', '"error":"\\"text\\""', '"logs":[1]', '"task":7', '"worker":["w"]', '"attempt":"2"']
)
def test_a_status_read_refuses_a_record_field_of_the_wrong_type(taskmesh_client: Client, field: str) -> None:
    handle = work.enqueue(1)
    raw = '{"task":"hostile.work","prio":0,"attempt":1,"stalls":0,"state":"failed",' + field + "}"
    if '"task":7' in field:
        raw = raw.replace('"task":"hostile.work",', "")
    if '"attempt":"2"' in field:
        raw = raw.replace('"attempt":1,', "")
    corrupt(taskmesh_client, handle.id, raw)
    with pytest.raises(CorruptRecord):
        handle.status()
    with pytest.raises(CorruptRecord):
        handle.result(timeout=1)
