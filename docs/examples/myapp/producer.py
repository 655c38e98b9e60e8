"""Enqueue a job and follow it (the quickstart's second part; the lines between the markers are shown)."""

from typing import Any

from myapp.tasks import export


def enqueue_and_follow() -> tuple[str, str, Any]:
    # --8<-- [start:enqueue]
    handle = export.enqueue("u1")  # default client: $TASKMESH_REDIS_URL, else redis://localhost:6379/0
    job_id = handle.id  # answer the HTTP request with this
    state = handle.status().state  # waiting | delayed | active | completed | failed | cancelled
    result = handle.result(timeout=30)  # waits on the event stream; raises JobFailed for a failed job

    export.options(job_id="export-u1", delay=5, priority=10).enqueue("u1")  # dedupe, delay, priority
    # --8<-- [end:enqueue]
    return job_id, state, result
