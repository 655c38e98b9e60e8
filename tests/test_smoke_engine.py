import pytest

from taskmesh import Client, Job, task

pytestmark = pytest.mark.also_cluster  # also run against a Redis Cluster (tests/conftest.py)


@task
def add(x: int, y: int) -> int:
    return x + y


@task(retries=1, backoff=0)
def flaky(job: Job) -> int:
    job.progress(50)
    if job.attempt == 1:
        raise RuntimeError("first attempt fails")
    return job.attempt


def test_enqueued_job_completes_with_result(taskmesh_client: Client, taskmesh_drain) -> None:
    handle = add.enqueue(2, 3)
    stats = taskmesh_drain([add])
    assert stats.completed == 1
    assert handle.result(timeout=5) == 5


def test_failed_attempt_is_retried(taskmesh_client: Client, taskmesh_drain) -> None:
    handle = flaky.enqueue()
    taskmesh_drain([flaky])
    status = handle.status()
    assert status.result == 2
    assert status.progress == 50
