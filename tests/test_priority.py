"""Priority on every path into 'waiting': higher priority leases first, FIFO within a priority.

A job enters 'waiting' when it is enqueued alone or in a batch, and again when a retry has no delay, when
its worker hands it back, when the sweep recovers its expired lease and when its delay is due. Each test
brings a job of priority 5 in by one path while jobs of priorities 10, 5 and 0 wait: it must lease after
the 10s and the 5s already waiting (it joins its priority last) and before the 0s.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import step

from taskmesh import Call, Client, JobState
from taskmesh.store import scripts
from taskmesh.store.scripts import Leased, Update
from taskmesh.testing import wait_until

TASK = "priority.job"
#: Waiting jobs (id, priority) in enqueue order.
WAITING = [("high-1", 10), ("mid-1", 5), ("low-1", 0), ("high-2", 10), ("mid-2", 5), ("low-2", 0)]
#: The lease order once the job "moved" (priority 5) joined them.
EXPECTED = ["high-1", "high-2", "mid-1", "mid-2", "moved", "low-1", "low-2"]


def lease_order(client: Client) -> list[str]:
    """Lease every waiting job in one step: the ids in the order the queue gives them."""
    args = scripts.step_args(client.settings, "w2", 100, [])
    _, leased, _ = scripts.parse_step(scripts.call(client.redis, "step", client.keys("default").all, args))
    return [job.id for job in leased]


def fill(client: Client) -> None:
    client.enqueue_many(Call(TASK, job_id=job_id, priority=prio) for job_id, prio in WAITING)


def redis_ms(client: Client) -> int:
    seconds, micros = client.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_jobs_enqueued_one_at_a_time_lease_by_priority_then_in_order(taskmesh_client: Client) -> None:
    plan = [("bottom", -1000), *WAITING, ("top", 1000)]
    for job_id, prio in plan:
        taskmesh_client.submit(Call(TASK, job_id=job_id, priority=prio))
    assert lease_order(taskmesh_client) == ["top", "high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2", "bottom"]


def test_jobs_enqueued_in_one_batch_lease_by_priority_then_in_order(taskmesh_client: Client) -> None:
    taskmesh_client.enqueue_many(Call(TASK, job_id=job_id, priority=prio) for job_id, prio in [*WAITING, ("moved", 5)])
    assert lease_order(taskmesh_client) == EXPECTED


def retry_now(job: Leased) -> Update:
    """The job's run failed and its task retries it without a delay (attempts remain)."""
    return Update("f", job.id, job.token, '{"type":"E"}', 0, 3)


def hand_back(job: Leased) -> Update:
    """The job's worker hands it back unrun (a graceful stop)."""
    return Update("r", job.id, job.token)


@pytest.mark.parametrize("report", [retry_now, hand_back])
def test_a_job_put_back_by_its_worker_joins_the_end_of_its_priority(
    taskmesh_client: Client, report: Callable[[Leased], Update]
) -> None:
    taskmesh_client.submit(Call(TASK, job_id="moved", priority=5))
    [job] = step(taskmesh_client, 1)
    fill(taskmesh_client)
    step(taskmesh_client, 0, [report(job)])
    status = taskmesh_client.status("moved")
    assert status is not None and status.state is JobState.WAITING
    assert lease_order(taskmesh_client) == EXPECTED


def test_a_job_whose_lease_expired_rejoins_the_end_of_its_priority(taskmesh_client: Client) -> None:
    short = taskmesh_client.settings.replace(lease_seconds=0.002, renew_interval=0.001)
    taskmesh_client.submit(Call(TASK, job_id="moved", priority=5))
    step(taskmesh_client, 1, settings=short)
    fill(taskmesh_client)
    deadline = taskmesh_client.redis.zscore(taskmesh_client.keys("default").active, "moved")
    assert deadline is not None
    wait_until(lambda: redis_ms(taskmesh_client) > deadline, timeout=5, message="lease expired")
    keys = taskmesh_client.keys("default").all
    recovered, lost = scripts.call(taskmesh_client.redis, "sweep", keys, scripts.sweep_args(short))
    assert (recovered, lost) == (["moved"], [])
    assert lease_order(taskmesh_client) == EXPECTED


def test_a_delayed_job_when_due_joins_the_end_of_its_priority(taskmesh_client: Client) -> None:
    taskmesh_client.submit(Call(TASK, job_id="moved", priority=5, delay=0.002))
    fill(taskmesh_client)
    due = taskmesh_client.redis.zscore(taskmesh_client.keys("default").delayed, "moved")
    assert due is not None
    wait_until(lambda: redis_ms(taskmesh_client) >= due, timeout=5, message="delay due")
    assert lease_order(taskmesh_client) == EXPECTED  # the step promotes the due job, then leases
