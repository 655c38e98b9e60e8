"""The scheduled task of the cron fault tests: every second, recording each run in the ledger."""

from __future__ import annotations

from taskmesh import Job, task

from .ledger import record_run


@task(name="faults.every_second", every=1)
async def every_second(job: Job) -> str:
    record_run("start", job)
    record_run("finish", job)
    return job.id
