"""The scheduled tasks of the cron fault tests: every second, recording each run in the ledger; the second one
skips a tick while its previous run is unfinished, so each of its ticks is recorded as enqueued or skipped."""

from __future__ import annotations

from taskmesh import Job, Schedule, task

from .ledger import record_run


@task(name="faults.every_second", every=1)
async def every_second(job: Job) -> str:
    record_run("start", job)
    record_run("finish", job)
    return job.id


@task(name="faults.every_second_unless_busy", schedule=Schedule(every=1, overlap="skip"))
async def every_second_unless_busy(job: Job) -> str:
    record_run("start", job)
    record_run("finish", job)
    return job.id
