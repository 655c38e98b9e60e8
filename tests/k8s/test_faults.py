"""The ``k8s`` runner under API faults, a worker killed after creating a Job, a hand-back, and the start-up sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taskmesh_k8s import JobOptions, K8sConfig, manifest
from taskmesh_k8s.manifest import Attempt

from taskmesh import Client, JobFailed, JobState, task
from taskmesh.store import scripts
from taskmesh.testing import RunningWorker, drain, wait_until

from . import tasks
from .conftest import FAST, TESTS_DIR
from .fake import FakeKubernetes

Workers = Callable[..., RunningWorker]


def posts(fake: FakeKubernetes) -> list[float]:
    return [at for at, method, path in fake.requests if method == "POST"]


def test_rate_limited_create_waits_for_retry_after(fake_k8s: FakeKubernetes, k8s_worker: Workers) -> None:
    fake_k8s.fault("POST", r"/jobs$", code=429, retry_after=1, message="too many requests")
    k8s_worker([tasks.add])
    assert tasks.add.enqueue(1, 1).result(timeout=20) == 2
    first, second = posts(fake_k8s)
    assert second - first >= 1.0
    assert len(fake_k8s.created) == 1


def test_server_errors_and_timeouts_are_retried(
    fake_k8s: FakeKubernetes, k8s_worker: Workers, k8s_config: K8sConfig
) -> None:
    fake_k8s.fault("POST", r"/jobs$", code=500, times=2)
    fake_k8s.fault("GET", r"/jobs\?(?!.*watch=)", stall=1.5)  # the first list outlasts the client's timeout
    fake_k8s.fault("GET", r"/jobs\?(?!.*watch=)", code=503, times=2)
    k8s_worker([tasks.add], config=K8sConfig(kubeconfig=k8s_config.kubeconfig, watch_seconds=2, request_timeout=0.5))
    assert tasks.add.enqueue(2, 2).result(timeout=30) == 4
    assert len(posts(fake_k8s)) == 3
    assert len(fake_k8s.created) == 1
    assert [f.hits for f in fake_k8s.faults] == [2, 1, 2]


def test_create_applied_but_its_answer_lost_adopts_the_job(fake_k8s: FakeKubernetes, k8s_worker: Workers) -> None:
    fake_k8s.fault("POST", r"/jobs$", drop=True, apply=True)
    k8s_worker([tasks.add])
    assert tasks.add.enqueue(3, 4).result(timeout=20) == 7
    assert len(posts(fake_k8s)) == 2
    assert len(fake_k8s.created) == 1 and fake_k8s.conflicts == fake_k8s.created
    assert fake_k8s.pods_started() == 1


@pytest.mark.parametrize("as_event", [True, False], ids=["error-event", "http-status"])
def test_watch_from_a_compacted_version_lists_again(
    fake_k8s: FakeKubernetes, k8s_worker: Workers, as_event: bool
) -> None:
    fake_k8s.fault("GET", r"watch=true", code=410, event=as_event, message="too old resource version")
    k8s_worker([tasks.add])
    assert tasks.add.enqueue(5, 5).result(timeout=20) == 10
    lists = [path for _, method, path in fake_k8s.requests if method == "GET" and "fieldSelector" in path]
    assert sum("watch=true" not in path for path in lists) >= 2  # listed again after the 410


def test_failing_watches_fall_back_to_status_reads(fake_k8s: FakeKubernetes, k8s_worker: Workers) -> None:
    fault = fake_k8s.fault("GET", r"watch=true", code=500, times=1000)
    k8s_worker([tasks.add])
    assert tasks.add.enqueue(6, 6).result(timeout=20) == 12
    assert fault.hits >= 1
    assert any(method == "GET" and "/jobs/tm-" in path for _, method, path in fake_k8s.requests)


def test_forbidden_create_fails_the_attempt_with_the_apis_message(
    fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    message = 'jobs.batch is forbidden: User "system:serviceaccount:app:worker" cannot create resource "jobs"'
    fake_k8s.fault("POST", r"/jobs$", code=403, message=message)
    k8s_worker([tasks.add])
    with pytest.raises(JobFailed) as info:
        tasks.add.enqueue(1, 2).result(timeout=20)
    assert "403" in info.value.error["message"] and message in info.value.error["message"]
    assert len(posts(fake_k8s)) == 1  # not retried


@task(
    name="k8s.mislabelled",
    runner="k8s",
    runner_options={**tasks.IMAGE, "job_template": {"metadata": {"labels": {"team": "data science"}}}},
)
def mislabelled() -> None: ...


def test_invalid_job_fails_the_attempt_with_the_apis_message(fake_k8s: FakeKubernetes, k8s_worker: Workers) -> None:
    fake_k8s.expect_invalid = True  # type: ignore[attr-defined]
    k8s_worker([mislabelled])
    with pytest.raises(JobFailed) as info:
        mislabelled.enqueue().result(timeout=20)
    assert (
        "422" in info.value.error["message"]
        and "invalid label value team='data science'" in info.value.error["message"]
    )
    assert fake_k8s.created == []


def test_worker_killed_after_creating_the_job_its_successor_adopts_it(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, kubeconfig: Path, k8s_worker: Workers, tmp_path: Path
) -> None:
    created = threading.Event()
    fake_k8s.on_create = lambda job: created.set()
    handle = tasks.sleep.enqueue(1.0)
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS_DIR),
        "TASKMESH_REDIS_URL": taskmesh_client.settings.redis_url,
        "TASKMESH_PREFIX": taskmesh_client.settings.prefix,
        "TASKMESH_K8S_KUBECONFIG": str(kubeconfig),
        "TASKMESH_K8S_WATCH_SECONDS": "2",
        **{f"TASKMESH_{name.upper()}": str(value) for name, value in FAST.items()},
    }
    with (tmp_path / "worker.log").open("wb") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "taskmesh", "run", "k8s.tasks"], cwd=tmp_path, env=env, stderr=log
        )
    try:
        assert created.wait(20), "the first worker created no Job"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    k8s_worker([tasks.sleep], **FAST)
    assert handle.result(timeout=30) == "slept"
    assert len(fake_k8s.created) == 1 and fake_k8s.conflicts == fake_k8s.created  # one Job, adopted
    assert fake_k8s.pods_started() == 1
    status = handle.status()
    assert (status.attempts, status.stalls) == (1, 1)


def test_job_handed_back_on_shutdown_keeps_its_job_for_the_next_holder(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    first = k8s_worker([tasks.sleep], grace_period=0.2)
    handle = tasks.sleep.enqueue(2.0)
    wait_until(fake_k8s.pods_started, timeout=10, message="the pod started")
    assert first.stop().released == 1
    assert handle.status().state is JobState.WAITING and fake_k8s.deleted == []
    k8s_worker([tasks.sleep])
    assert handle.result(timeout=20) == "slept"
    assert len(fake_k8s.created) == 1 and fake_k8s.conflicts == fake_k8s.created
    assert fake_k8s.pods_started() == 1


@task(name="k8s.sweep.done", queue="sweep")
def done() -> int:
    return 1


@task(name="k8s.sweep.held", queue="sweep")
def held() -> None: ...


def test_start_up_sweep_deletes_jobs_whose_taskmesh_job_no_longer_needs_them(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    fake_k8s.run_pods = False
    prefix = taskmesh_client.settings.prefix
    finished = done.enqueue()
    drain(taskmesh_client, [done])
    active = held.enqueue()
    keys = taskmesh_client.keys("sweep")
    scripts.call(
        taskmesh_client.redis, "step", keys.all, scripts.step_args(taskmesh_client.settings, "elsewhere", 1, [])
    )
    waiting = held.enqueue()
    assert taskmesh_client.status(active.id, "sweep").state is JobState.ACTIVE

    def job(job_id: str, attempt: int, created: int | None = None, of: str = prefix) -> str:
        if created is None:
            created = _created(taskmesh_client, job_id)
        at = Attempt(of, "sweep", job_id, created, attempt, 1, "k8s.sweep.held", __name__)
        options = JobOptions.parse("k8s.sweep.held", tasks.IMAGE, K8sConfig(), "redis://r")
        assert fake_k8s.create_job("default", manifest.build(at, options, None, 100))[0] == 201
        return at.name

    leftovers = {
        job(finished.id, 1),  # its job completed
        job("no-such-job", 1, created=1),  # its job is gone
        job(finished.id, 1, created=1),  # made for an earlier job with the same id
        job(active.id, 2),  # another attempt than the active one
        job(waiting.id, 3),  # not the attempt the next lease makes
    }
    kept = {job(active.id, 1), job(waiting.id, 1), job(finished.id, 1, of="other")}
    k8s_worker([tasks.add])
    wait_until(lambda: len(fake_k8s.deleted) >= len(leftovers), timeout=10, message="the leftover Jobs deleted")
    assert {name for _, name, _ in fake_k8s.deleted} == leftovers
    assert {name for _, name in fake_k8s.jobs} == kept


def _created(client: Client, job_id: str) -> int:
    raw: Any = client.redis.hget(client.keys("sweep").jobs, job_id)
    return int(json.loads(raw)["created"])
