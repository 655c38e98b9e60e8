"""Tasks the demo runs: a slow report with progress, a quick sum, and a flaky call that retries."""

from __future__ import annotations

import random
import time

from taskmesh import Backoff, Job, task


@task(name="demo.report", queue="demo", retries=2, timeout=60)
def build_report(job: Job, customer: str, rows: int) -> dict[str, object]:
    """Pretend to build a report in ten steps, reporting progress after each."""
    total = 0
    for step in range(1, 11):
        time.sleep(0.15)
        total += rows // 10
        job.progress(step * 10)
    job.log(f"report for {customer} has {total} rows")
    return {"customer": customer, "rows": total, "url": f"/reports/{customer}.csv"}


@task(name="demo.add", queue="demo")
async def add(x: int, y: int) -> int:
    return x + y


@task(name="demo.flaky", queue="demo", retries=3, backoff=Backoff.fixed(0.2))
def flaky_call(job: Job, seed: int) -> str:
    """Fails its first attempt (as a downstream hiccup would), then succeeds on a retry."""
    if job.attempt == 1 or random.Random(seed + job.attempt).random() < 0.2:
        raise ConnectionError("downstream hiccup")
    return f"ok after {job.attempt} attempts"
