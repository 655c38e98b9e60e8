"""Job names, labels, task options and the generated manifests (validated against the Kubernetes schemas)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client
from taskmesh_k8s import JobOptions, K8sConfig, manifest, names
from taskmesh_k8s.manifest import Attempt

from taskmesh import ConfigurationError

from .fake import K8S_VERSION, label_problems

CONFIG = K8sConfig(namespace="jobs")
IDS = [
    "7709c2535cc833ac70f0ae508fc13d27",
    "cron:nightly-report:1700000000",
    "Export/User#42?&x=1",
    "ÄÖÜ-ünïcode-ключ",
    "x" * 200,
    "---",
    "UPPER.case_with.dots",
]


def attempt(job_id: str = "job-1", attempt: int = 1, queue: str = "default", created: int = 1700000000000) -> Attempt:
    return Attempt("app", queue, job_id, created, attempt, 42, "reports.export", "myapp.tasks")


def options(**raw: Any) -> JobOptions:
    return JobOptions.parse("reports.export", {"image": "app:1", **raw}, CONFIG, "redis://redis:6379/0")


def valid(job: dict[str, Any]) -> dict[str, Any]:
    """The manifest passes the schema (strict: no unknown fields), the API server's name and label rules,
    and the client's own model loses nothing of it."""
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert names.is_dns_label(job["metadata"]["name"])
    assert label_problems(job["metadata"]["labels"]) == []
    assert label_problems(job["spec"]["template"]["metadata"]["labels"]) == []
    assert client.ApiClient().sanitize_for_serialization(client.V1Job.from_dict(job)) == job
    return job


@pytest.mark.parametrize("job_id", IDS)
def test_job_names_are_dns_labels_of_at_most_63_characters(job_id: str) -> None:
    for n in (1, 2, 10, 123456):
        name = attempt(job_id, n).name
        assert names.is_dns_label(name), name
        assert name.startswith("tm-")
        assert f"-{n}-" in name


def test_job_names_are_deterministic_and_differ_by_attempt_queue_and_creation() -> None:
    assert attempt().name == attempt().name
    others = {attempt(attempt=2).name, attempt(queue="other").name, attempt(created=1).name, attempt("job-2").name}
    assert attempt().name not in others and len(others) == 4


@pytest.mark.parametrize("text", [*IDS, "a" * 63, "a" * 64, "-x-", ""])
def test_label_values_are_valid_and_keep_valid_text_as_is(text: str) -> None:
    value = names.label_value(text)
    assert label_problems({"k": value}) == []
    if len(text) <= 63 and names.LABEL_VALUE.fullmatch(text):
        assert value == text
    else:
        assert value != names.label_value(text + "x")


def test_default_manifest_is_valid_and_carries_the_attempt() -> None:
    job = valid(manifest.build(attempt(), options(), None, 10000))
    assert job["metadata"]["namespace"] == "jobs"
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "taskmesh",
        "taskmesh.io/prefix": "app",
        "taskmesh.io/queue": "default",
        "taskmesh.io/job": "job-1",
        "taskmesh.io/attempt": "1",
        "taskmesh.io/task": "reports.export",
    }
    assert job["metadata"]["annotations"]["taskmesh.io/job-id"] == "job-1"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (0, 3600)
    assert "activeDeadlineSeconds" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "taskmesh_k8s.entry"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["TASKMESH_REDIS_URL"] == "redis://redis:6379/0"
    assert env["TASKMESH_JOB_ID"] == "job-1" and env["TASKMESH_JOB_TOKEN"] == "42"
    assert env["TASKMESH_TASK_MODULE"] == "myapp.tasks"
    assert env["TASKMESH_RESULT_KEY"] == f"{{app:default}}:k8s:{job['metadata']['name']}"


def test_full_options_make_a_valid_manifest() -> None:
    opts = options(
        command=["/app/run"],
        args=["--fast"],
        namespace="batch",
        service_account="runner",
        env={
            "MODE": "fast",
            "TOKEN": {"secret": "creds", "key": "token"},
            "LEVEL": {"config_map": "cfg", "key": "lvl"},
        },
        env_from=[{"secret": "all-creds"}, {"config_map": "all-settings"}],
        resources={"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        node_selector={"pool": "batch"},
        tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        labels={"team": "data"},
        annotations={"owner": "data@example.com"},
        image_pull_secrets=["regcred"],
        ttl_seconds_after_finished=60,
        redis_url_secret={"secret": "redis", "key": "url"},
    )
    job = valid(manifest.build(attempt("Export/User#42"), opts, 90.5, 10000))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (91, 60)
    assert job["metadata"]["namespace"] == "batch" and job["metadata"]["labels"]["team"] == "data"
    assert pod["serviceAccountName"] == "runner" and pod["nodeSelector"] == {"pool": "batch"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    container = pod["containers"][0]
    assert (container["command"], container["args"]) == (["/app/run"], ["--fast"])
    env = {item["name"]: item for item in container["env"]}
    assert env["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "token"}}
    assert env["LEVEL"]["valueFrom"] == {"configMapKeyRef": {"name": "cfg", "key": "lvl"}}
    assert env["TASKMESH_REDIS_URL"] == {
        "name": "TASKMESH_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}},
    }
    assert container["envFrom"] == [{"secretRef": {"name": "all-creds"}}, {"configMapRef": {"name": "all-settings"}}]
    assert not opts.runs_entry


def test_template_is_merged_and_the_reserved_parts_are_applied_again() -> None:
    template = {
        "metadata": {"name": "mine", "labels": {"taskmesh.io/job": "forged", "team": "data"}},
        "spec": {
            "backoffLimit": 5,
            "template": {
                "metadata": {"labels": {"taskmesh.io/attempt": "9"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "priorityClassName": "batch-low",
                    "containers": [
                        {
                            "name": "task",
                            "imagePullPolicy": "Always",
                            "env": [{"name": "TASKMESH_JOB_TOKEN", "value": "1"}],
                        },
                        {"name": "proxy", "image": "proxy:2"},
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }
    job = valid(manifest.build(attempt(), options(job_template=template), None, 10000))
    assert job["metadata"]["name"] == attempt().name
    assert job["metadata"]["labels"]["taskmesh.io/job"] == "job-1" and job["metadata"]["labels"]["team"] == "data"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["taskmesh.io/attempt"] == "1"
    assert pod["metadata"]["labels"]["taskmesh.io/job-name"] == attempt().name
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["priorityClassName"] == "batch-low"
    assert pod["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    task, proxy = pod["spec"]["containers"]
    assert (task["image"], task["imagePullPolicy"]) == ("app:1", "Always")
    assert [e["value"] for e in task["env"] if e["name"] == "TASKMESH_JOB_TOKEN"] == ["42"]
    assert proxy == {"name": "proxy", "image": "proxy:2"}


def test_image_may_come_from_the_template_or_the_runner_configuration() -> None:
    template = {"spec": {"template": {"spec": {"containers": [{"name": "task", "image": "from-template:1"}]}}}}
    opts = JobOptions.parse("t", {"job_template": template}, CONFIG, "redis://r")
    assert valid(manifest.build(attempt(), opts, None, 1))["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "from-template:1"
    )
    assert JobOptions.parse("t", {}, K8sConfig(image="default:1"), "redis://r").image == "default:1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"imag": "x"}, "unknown option(s) imag"),
        ({"image": "x", "env": {"A": {"secret": "s"}}}, "env A must be"),
        ({"image": "x", "env_from": [{"secrets": "s"}]}, "env_from items must be"),
        ({"image": "x", "command": "run"}, "command must be a list of strings"),
        ({"image": "x", "namespace": "Bad_NS"}, "invalid namespace"),
        ({"image": "x", "labels": {"team": "data science"}}, "invalid label team="),
        ({"image": "x", "labels": {"Bad Key/x": "v"}}, "invalid label Bad Key/x="),
        ({"image": "x", "ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
        ({"image": "x", "redis_url_secret": {"config_map": "c", "key": "k"}}, "redis_url_secret must be"),
        ({}, "no image"),
        ({"image": "x", "redis_url": "redis://:pw@redis:6379/0"}, "holds a password"),
    ],
)
def test_bad_options_are_configuration_errors_naming_the_task(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        JobOptions.parse("reports.export", raw, CONFIG, "redis://redis:6379/0")
    assert "reports.export" in str(info.value) and expected in str(info.value)


def test_a_worker_redis_url_with_a_password_is_never_written_into_the_job() -> None:
    with pytest.raises(ConfigurationError, match="must not be written into the Job"):
        JobOptions.parse("t", {"image": "x"}, CONFIG, "redis://app:secret@redis:6379/0")
    opts = JobOptions.parse(
        "t", {"image": "x", "redis_url_secret": {"secret": "r", "key": "url"}}, CONFIG, "redis://app:secret@r"
    )
    assert "secret@" not in str(manifest.build(attempt(), opts, None, 1))


def test_every_config_field_reads_from_its_environment_variable() -> None:
    env = {
        "TASKMESH_K8S_NAMESPACE": "jobs",
        "TASKMESH_K8S_WATCH_SECONDS": "45",
        "TASKMESH_K8S_RETRY_BASE": "0.5",
        "TASKMESH_K8S_RETRIES": "2",
        "TASKMESH_K8S_PROPAGATION_POLICY": "Foreground",
        "TASKMESH_K8S_IMAGE": "",  # empty: unset
    }
    config = K8sConfig.from_env(env)
    assert (config.namespace, config.watch_seconds, config.retry_base, config.retries) == ("jobs", 45, 0.5, 2)
    assert (config.propagation_policy, config.image) == ("Foreground", None)
    with pytest.raises(ConfigurationError, match="TASKMESH_K8S_LOG_LINES: cannot read 'many' as int"):
        K8sConfig.from_env({"TASKMESH_K8S_LOG_LINES": "many"})
