"""The ``k8s`` runner end to end: the real client over HTTP, the fake API server's pods running ``taskmesh_k8s.entry``
against the test Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taskmesh_k8s import K8sConfig, K8sPlugin, names

from taskmesh import Client, ConfigurationError, JobFailed, JobState, Registry, Task, Worker, task
from taskmesh.testing import RunningWorker, wait_until

from . import tasks
from .fake import FakeKubernetes

Workers = Callable[..., RunningWorker]


def test_attempt_runs_as_one_job_and_its_result_progress_and_log_are_recorded(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([tasks.add])
    handle = tasks.add.enqueue(2, 3)
    assert handle.result(timeout=20) == 5
    status = handle.status()
    assert status.progress == 50
    assert status.logs == ["adding 2 and 3"]
    assert len(fake_k8s.created) == 1
    job = fake_k8s.job("default", fake_k8s.created[0])
    assert job is not None
    labels = job["metadata"]["labels"]
    assert labels[names.JOB_LABEL] == handle.id
    assert labels[names.ATTEMPT_LABEL] == "1"
    assert labels[names.QUEUE_LABEL] == "default"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


def test_failed_task_reports_its_error_the_pods_exit_and_a_log_tail(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([tasks.fail])
    handle = tasks.fail.enqueue("boom")
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=20)
    error = info.value.error
    assert error["type"] == "KubernetesJobFailed"
    message = error["message"]
    assert message.startswith("ValueError: boom")
    assert "BackoffLimitExceeded" in message
    assert "container task exited 1 (Error)" in message
    assert "about to fail" in message  # from the pod's log
    assert "raise ValueError(message)" in error["traceback"]  # the pod's traceback, as the cause
    assert handle.status().attempts == 1


def test_each_attempt_gets_its_own_job(taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers) -> None:
    k8s_worker([tasks.flaky])
    handle = tasks.flaky.enqueue()
    assert handle.result(timeout=30) == 2
    assert len(fake_k8s.created) == 2
    first, second = fake_k8s.created
    assert first.startswith("tm-") and "-1-" in first
    assert second.startswith("tm-") and "-2-" in second
    assert first.rsplit("-", 1)[1] == second.rsplit("-", 1)[1]  # the same job: the same hash


def test_env_comes_from_literals_secrets_and_config_maps_by_reference(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    fake_k8s.secrets[("default", "creds")] = {"token": "s3cret"}
    fake_k8s.config_maps[("default", "settings")] = {"MODE": "fast"}
    k8s_worker([tasks.env])
    handle = tasks.env.enqueue()
    assert handle.result(timeout=20) == {"GREETING": "hello", "API_TOKEN": "s3cret", "MODE": "fast"}
    job = fake_k8s.job("default", fake_k8s.created[0])
    assert job is not None
    assert "s3cret" not in str(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    token = next(item for item in container["env"] if item["name"] == "API_TOKEN")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "token"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "settings"}}]


def test_timeout_sets_the_deadline_and_deletes_the_job(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([tasks.overdue])
    handle = tasks.overdue.enqueue()
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=20)
    assert "timeout" in info.value.error["message"]
    name = fake_k8s.created[0]
    wait_until(lambda: fake_k8s.deleted, timeout=10, message="the Job deleted")
    assert fake_k8s.deleted == [("default", name, "Background")]
    assert fake_k8s.history[0][3]["spec"]["activeDeadlineSeconds"] == 1


def test_cancel_request_deletes_the_job_and_its_pod(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([tasks.sleep])
    handle = tasks.sleep.enqueue(30)
    wait_until(fake_k8s.pods_started, timeout=10, message="the pod started")
    assert handle.cancel() == "cancelling"
    assert taskmesh_client.wait_job(handle.id, timeout=10).state is JobState.CANCELLED
    wait_until(lambda: fake_k8s.deleted, timeout=10, message="the Job deleted")
    assert fake_k8s.deleted == [("default", fake_k8s.created[0], "Background")]
    run = next(iter(fake_k8s.runs.values()))
    assert run.killed and run.process is not None and run.process.poll() is not None


def test_slow_down_in_the_pod_defers_and_the_next_run_creates_the_job_again(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([tasks.busy])
    handle = tasks.busy.enqueue()
    wait_until(lambda: fake_k8s.deleted, timeout=20, message="the deferred attempt's Job deleted")
    fake_k8s.pod_env["K8S_TEST_SECOND_RUN"] = "1"
    assert handle.result(timeout=20) == "done"
    assert handle.status().attempts == 1  # a deferral spends no attempt
    assert len(fake_k8s.created) == 2 and fake_k8s.created[0] == fake_k8s.created[1]


@task(
    name="k8s.badport",
    runner="k8s",
    runner_options={
        **tasks.IMAGE,
        "job_template": {
            "spec": {"template": {"spec": {"containers": [{"name": "task", "ports": [{"containerPort": "http"}]}]}}}
        },
    },
)
def badport() -> None: ...


@task(name="k8s.typo", runner="k8s", runner_options={"imgae": "app:1"})
def typo() -> None: ...


@pytest.mark.parametrize(
    ("bad", "expected"),
    [(badport, "k8s.badport: runner_options make an invalid Job"), (typo, "k8s.typo: runner_options: unknown option")],
)
def test_bad_runner_options_stop_the_worker_at_start_up(
    taskmesh_client: Client, k8s_config: K8sConfig, bad: Task[Any, Any], expected: str
) -> None:
    registry = Registry([tasks.add, bad])
    worker = Worker.create(registry, taskmesh_client.settings, plugins=[K8sPlugin(k8s_config)], entry_points=False)
    with pytest.raises(ConfigurationError, match=expected):
        asyncio.run(worker.run())
    assert worker.stats.leased == 0


def test_missing_kubeconfig_is_a_start_up_error(taskmesh_client: Client, tmp_path: Path) -> None:
    config = K8sConfig(kubeconfig=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match="cannot load its Kubernetes configuration"):
        Worker.create(Registry([tasks.add]), taskmesh_client.settings, plugins=[K8sPlugin(config)], entry_points=False)


@task(
    name="k8s.own_command",
    runner="k8s",
    runner_options={
        **tasks.IMAGE,
        "command": ["python", "-c", "import os; print('job', os.environ['TASKMESH_JOB_ID'])"],
    },
)
def own_command() -> None: ...


def test_a_command_of_your_own_completes_with_no_result(
    taskmesh_client: Client, fake_k8s: FakeKubernetes, k8s_worker: Workers
) -> None:
    k8s_worker([own_command])
    handle = own_command.enqueue()
    assert handle.result(timeout=20) is None
    assert handle.status().state is JobState.COMPLETED
    run = next(iter(fake_k8s.runs.values()))
    assert run.log.decode().strip() == f"job {handle.id}"
