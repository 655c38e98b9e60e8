"""Retention of finished jobs, by count and by age, on every path that finishes one.

Completed jobs follow ``completed_keep`` / ``completed_age``; failed and cancelled jobs follow ``failed_keep``
/ ``failed_age``, whichever script ended them: a worker's step (a failure, a cancelled run), the cancel of a
waiting job, or the sweep of an expired lease (a worker lost past ``max_stalls``, a cancel requested of a job
whose worker died). The two retentions differ here, so a path that trimmed with the other one's would fail.

Retention reads a job's age from its score in its state's set (the time it finished); a job that finished
hours ago is made by moving that score back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from helpers import step

from taskmesh import Call, Client, JobState, Settings
from taskmesh.store import scripts
from taskmesh.store.scripts import Leased, Update
from taskmesh.testing import wait_until

TASK = "retention.job"
MINUTE = 60_000
#: Retention by count only: the newest 3 completed, the newest 2 failed and the newest 2 cancelled.
COUNTS = {"completed_keep": 3, "completed_age": -1, "failed_keep": 2, "failed_age": -1}
#: Retention by age only: completed jobs for an hour, failed and cancelled ones for two.
AGES = {"completed_keep": -1, "completed_age": 3600, "failed_keep": -1, "failed_age": 7200}


def redis_ms(client: Client) -> int:
    seconds, micros = client.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_past(client: Client, ms: float) -> None:
    """Wait (bounded) until Redis's clock is past ``ms``."""
    wait_until(lambda: redis_ms(client) > ms, timeout=5, message=f"Redis time past {ms}")


def lease(client: Client, job_id: str, settings: Settings | None = None) -> Leased:
    """Enqueue job ``job_id`` and lease it (it is the only one waiting)."""
    client.submit(Call(TASK, job_id=job_id))
    [job] = step(client, 1, settings=settings)
    assert job.id == job_id
    return job


def short_lease(client: Client) -> Settings:
    """The client's retention, with leases that expire at once and no stall allowed."""
    return client.settings.replace(lease_seconds=0.002, renew_interval=0.001, max_stalls=0)


def sweep_expired(client: Client, job_id: str, settings: Settings) -> tuple[list[str], list[str]]:
    """Wait (bounded) until Redis's clock is past the job's lease deadline, then sweep once."""
    deadline = client.redis.zscore(client.keys("default").active, job_id)
    assert deadline is not None
    wait_past(client, deadline)
    recovered, lost = scripts.call(client.redis, "sweep", client.keys("default").all, scripts.sweep_args(settings))
    return list(recovered), list(lost)


def complete(client: Client, job_id: str) -> None:
    job = lease(client, job_id)
    step(client, 0, [Update("c", job.id, job.token, "null")])


def fail(client: Client, job_id: str) -> None:
    job = lease(client, job_id)
    step(client, 0, [Update("f", job.id, job.token, '{"type":"E"}', -1, 1)])


def lose(client: Client, job_id: str) -> None:
    settings = short_lease(client)
    lease(client, job_id, settings)
    assert sweep_expired(client, job_id, settings) == ([], [job_id])


def cancel_run(client: Client, job_id: str) -> None:
    job = lease(client, job_id)
    step(client, 0, [Update("x", job.id, job.token)])


def cancel_waiting(client: Client, job_id: str) -> None:
    client.submit(Call(TASK, job_id=job_id))
    assert client.cancel(job_id) == "cancelled"


def cancel_orphan(client: Client, job_id: str) -> None:
    settings = short_lease(client)
    lease(client, job_id, settings)
    assert client.cancel(job_id) == "cancelling"
    assert sweep_expired(client, job_id, settings) == ([], [])


#: Each path that finishes a job: the state it ends in, and how.
PATHS: dict[str, tuple[JobState, Callable[[Client, str], None]]] = {
    "completed-by-its-worker": (JobState.COMPLETED, complete),
    "failed-by-its-worker": (JobState.FAILED, fail),
    "failed-by-the-sweep-as-lost": (JobState.FAILED, lose),
    "cancelled-by-its-worker": (JobState.CANCELLED, cancel_run),
    "cancelled-while-waiting": (JobState.CANCELLED, cancel_waiting),
    "cancelled-by-the-sweep": (JobState.CANCELLED, cancel_orphan),
}


def finish(client: Client, path: str, job_id: str) -> str:
    """Finish job ``job_id`` by ``path``; returns the key of the set it ends in."""
    state, run = PATHS[path]
    run(client, job_id)
    status = client.status(job_id)
    assert status is not None, f"{job_id} was forgotten as it finished ({path})"
    assert status.state is state
    return str(getattr(client.keys("default"), state.value))


def remaining(client: Client, key: str) -> tuple[list[str], list[str], list[str]]:
    """(ids in the set ``key``, oldest first; ids with a record; ids with a payload), for a queue that holds
    only jobs of that set."""
    keys = client.keys("default")
    return (
        [str(i) for i in client.redis.zrange(key, 0, -1)],
        sorted(str(i) for i in client.redis.hkeys(keys.jobs)),
        sorted(str(i) for i in client.redis.hkeys(keys.payloads)),
    )


@pytest.fixture
def counting(taskmesh_client: Client) -> Iterator[Client]:
    client = Client(settings=taskmesh_client.settings.replace(**COUNTS))
    yield client
    client.close()


@pytest.fixture
def aging(taskmesh_client: Client) -> Iterator[Client]:
    client = Client(settings=taskmesh_client.settings.replace(**AGES))
    yield client
    client.close()


@pytest.mark.parametrize("path", PATHS)
def test_finished_jobs_past_their_keep_are_forgotten_oldest_first(counting: Client, path: str) -> None:
    state = PATHS[path][0]
    keep = counting.settings.completed_keep if state is JobState.COMPLETED else counting.settings.failed_keep
    ids = [f"job-{i}" for i in range(keep + 2)]
    for job_id in ids:
        key = finish(counting, path, job_id)
        # The next job finishes in a later millisecond, so "newest" has one meaning.
        finished = counting.redis.zscore(key, job_id)
        assert finished is not None
        wait_past(counting, finished)
    newest = ids[-keep:]
    assert remaining(counting, key) == (newest, newest, newest)


@pytest.mark.parametrize("path", PATHS)
def test_finished_jobs_older_than_their_age_are_forgotten_and_younger_ones_kept(aging: Client, path: str) -> None:
    ages = {"3h-ago": 180 * MINUTE, "90min-ago": 90 * MINUTE, "30min-ago": 30 * MINUTE}
    for job_id in ages:
        key = finish(aging, path, job_id)
    for job_id, ago in ages.items():
        finished = aging.redis.zscore(key, job_id)
        assert finished is not None
        aging.redis.zadd(key, {job_id: finished - ago}, xx=True)
    finish(aging, path, "just-now")  # its script trims: an hour for completed jobs, two for the others
    kept = ["30min-ago", "just-now"] if PATHS[path][0] is JobState.COMPLETED else ["90min-ago", "30min-ago", "just-now"]
    assert remaining(aging, key) == (kept, sorted(kept), sorted(kept))
