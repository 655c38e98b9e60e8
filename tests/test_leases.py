"""Fencing above the scripts: a run whose lease lapsed (its renewals stopped) and was swept keeps running while the
job runs again under a new token. Nothing the stale run reports (progress, log lines, its result or failure)
changes the job while the new holder runs it, and the new holder's reports land. Leases are renewed from the
worker's LeaseKeeper thread (a busy event loop keeps them: tests/faults/test_busy.py); a renewal that finds the
lease taken over tells the stale run (``Job.lease_lost``, ``LeaseLost``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from taskmesh import Client, Job, JobState, LeaseLost, task
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
Events = list[tuple[str, dict[str, str]]]
BOUND = 10.0  # every wait in these tests gives up after this long
#: A lease that lapses half a second after its renewals stop; the worker's own sweep recovers it.
SHORT = {"lease_seconds": 0.5, "renew_interval": 0.1, "sweep_interval": 0.1}
FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}


@dataclass
class Run:
    """One run of ``held``: it reports progress and a log line once ``report`` is set, then returns its token
    (or fails, if ``fail``) once ``finish`` is set."""

    job: Job
    fail: bool
    report: threading.Event = field(default_factory=threading.Event)
    reported: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)
    told_lost: bool = False  # its progress raised LeaseLost


runs: list[Run] = []


@task(name="leases.held")
async def held(job: Job, fail_first: bool = False) -> int:
    run = Run(job, fail=fail_first and not runs)
    runs.append(run)
    await asyncio.to_thread(run.report.wait, BOUND)
    try:  # both reports go out in one loop turn, before any reply can tell the run its lease is lost
        job.progress({"token": job.token})
        job.log(f"run {job.token}")
    except LeaseLost:
        run.told_lost = True
    run.reported.set()
    await asyncio.to_thread(run.finish.wait, BOUND)
    if run.fail:
        raise RuntimeError(f"run {job.token} failed")
    return job.token


@pytest.fixture(autouse=True)
def reset(taskmesh_worker: StartWorker) -> Iterator[None]:
    runs.clear()
    yield
    for run in runs:  # never leave a run blocked (its worker stops after this)
        run.report.set()
        run.finish.set()


def withhold_renewals(running: RunningWorker, token: int) -> Callable[[], None]:
    """``running`` stops renewing the lease of the run holding ``token``, as if its renewals hung (its other
    leases are renewed); returns what resumes them."""
    keeper = running.worker._upkeep.leases
    all_leases = keeper._leases
    keeper._leases = lambda: [lease for lease in all_leases() if lease[2] != token]

    def resume() -> None:
        keeper._leases = all_leases

    return resume


def snapshot(client: Client, job_id: str) -> tuple[str | None, Events]:
    """The job's stored record and the queue's whole event stream."""
    keys = client.keys("default")
    return cast(str | None, client.redis.hget(keys.jobs, job_id)), cast(Events, client.redis.xrange(keys.events))


def lapse_first_lease(stale_worker: RunningWorker) -> Callable[[], None]:
    """Once the first run started, its lease lapses (see withhold_renewals); returns what resumes its renewals."""
    wait_until(lambda: len(runs) == 1, timeout=BOUND, message="the first run started")
    return withhold_renewals(stale_worker, runs[0].job.token)


def rerun() -> tuple[Run, Run]:
    """The stale run and the new one, once the lapsed lease was swept and the job leased again."""
    wait_until(lambda: len(runs) == 2, timeout=BOUND, message="the lapsed lease swept and the job leased again")
    return runs[0], runs[1]


def assert_new_holder_reports_land(client: Client, job_id: str, new: Run, events_before: Events) -> None:
    new.report.set()
    new.finish.set()
    assert client.wait_job(job_id, timeout=BOUND) is not None
    status = client.status(job_id)
    assert status is not None
    assert (status.state, status.result, status.attempts, status.stalls) == (JobState.COMPLETED, new.job.token, 1, 1)
    assert (status.progress, status.logs) == ({"token": new.job.token}, [f"run {new.job.token}"])
    _, events = snapshot(client, job_id)
    later = [fields for _, fields in events[len(events_before) :]]
    assert [fields["event"] for fields in later] == ["progress", "log", "completed"]
    assert (later[0]["progress"], later[1]["message"]) == (f'{{"token":{new.job.token}}}', f"run {new.job.token}")


@pytest.mark.parametrize("outcome", ["result", "failure"])
def test_a_stale_runs_reports_change_nothing_while_another_worker_runs_the_job(
    taskmesh_client: Client, taskmesh_worker: StartWorker, outcome: str
) -> None:
    handle = held.enqueue(fail_first=outcome == "failure")
    stale_worker = taskmesh_worker([held], concurrency=1, **SHORT)  # one slot: the stale run keeps it
    lapse_first_lease(stale_worker)
    taskmesh_worker([held], concurrency=1, **FAST)
    stale, new = rerun()
    status = handle.status()
    assert (status.state, status.attempts, status.stalls) == (JobState.ACTIVE, 1, 1)
    before = snapshot(taskmesh_client, handle.id)

    # The stale worker never learned that its lease lapsed: it sends all three, and Redis refuses them on the
    # token alone (the job is active, held by the new run).
    stale.report.set()
    stale.finish.set()
    stats = stale_worker.worker.stats
    wait_until(
        lambda: stats.refused == 3 or stats.completed + stats.failed > 0,
        timeout=5,
        message="the stale run's " + outcome + " answered",
    )
    assert snapshot(taskmesh_client, handle.id) == before, "the stale run changed the job record or sent an event"
    assert (stats.refused, stale.told_lost) == (3, False)

    assert_new_holder_reports_land(taskmesh_client, handle.id, new, before[1])


def test_a_renewal_that_finds_the_lease_taken_over_tells_the_stale_run(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    handle = held.enqueue()
    stale_worker = taskmesh_worker([held], concurrency=1, **SHORT)
    resume = lapse_first_lease(stale_worker)
    taskmesh_worker([held], concurrency=1, **FAST)
    stale, new = rerun()
    resume()
    wait_until(lambda: stale.job.lease_lost, timeout=5, message="the stale worker's renewal noticed the takeover")
    before = snapshot(taskmesh_client, handle.id)

    stale.report.set()
    stale.finish.set()
    stats = stale_worker.worker.stats
    wait_until(lambda: stats.refused or stats.completed, timeout=5, message="the stale run's result answered")
    assert snapshot(taskmesh_client, handle.id) == before, "the stale run changed the job record or sent an event"
    assert stale.told_lost, "the stale run's progress must raise LeaseLost once its worker knows"
    assert stats.refused == 1

    assert_new_holder_reports_land(taskmesh_client, handle.id, new, before[1])


def test_a_stale_runs_reports_change_nothing_while_its_own_worker_runs_the_job_again(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    handle = held.enqueue()
    # Its second slot takes the job again; a longer lease keeps the new run's well clear of lapsing meanwhile.
    worker = taskmesh_worker([held], concurrency=2, **{**SHORT, "lease_seconds": 1.0})
    lapse_first_lease(worker)
    stale, new = rerun()
    status = handle.status()
    assert (status.state, status.attempts, status.stalls) == (JobState.ACTIVE, 1, 1)
    before = snapshot(taskmesh_client, handle.id)

    # The worker drops the stale run's reports (the job is its new run's now), and Redis would refuse them.
    stale.report.set()
    assert stale.reported.wait(BOUND) and not stale.told_lost
    # The new run reports after the stale one: once its log line is stored, the stale reports were dealt with.
    new.report.set()
    wait_until(lambda: handle.status().logs, timeout=BOUND, message="the new run's log line stored")
    _, events = snapshot(taskmesh_client, handle.id)
    status = handle.status()
    assert (status.state, status.progress, status.logs) == (
        JobState.ACTIVE,
        {"token": new.job.token},
        [f"run {new.job.token}"],
    ), "the stale run's progress or log line was recorded"
    later = [fields for _, fields in events[len(before[1]) :]]
    assert [(fields["event"], fields.get("progress", fields.get("message"))) for fields in later] == [
        ("progress", f'{{"token":{new.job.token}}}'),
        ("log", f"run {new.job.token}"),
    ], "only the new run's reports are recorded"

    new.finish.set()
    assert handle.result(timeout=BOUND) == new.job.token
    stale.finish.set()  # its result meets a finished job
    wait_until(lambda: worker.worker.stats.refused >= 1, timeout=5, message="the stale result refused")
    status = handle.status()
    assert (status.state, status.result, status.attempts, status.stalls) == (JobState.COMPLETED, new.job.token, 1, 1)
