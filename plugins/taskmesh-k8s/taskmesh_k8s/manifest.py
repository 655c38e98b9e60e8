"""The ``batch/v1`` Job manifest of one attempt, and the identity the runner checks before adopting a Job."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .options import DEFAULT_COMMAND, JobOptions

#: Seconds a pod's outcome stays in Redis for the worker (or the next holder of the job) to read.
RESULT_TTL = 24 * 3600


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one taskmesh job: what names its Job and what the pod needs to run it."""

    prefix: str
    queue: str
    job_id: str
    created: int  # the job's creation time (ms) in Redis: tells a job from an earlier one with the same id
    attempt: int
    token: int
    task: str
    module: str

    @property
    def name(self) -> str:
        return names.job_name(self.prefix, self.queue, self.job_id, self.created, self.attempt)

    @property
    def result_key(self) -> str:
        return names.result_key(self.prefix, self.queue, self.name)

    def labels(self) -> dict[str, str]:
        return {
            names.MANAGED_BY: names.MANAGER,
            names.PREFIX_LABEL: names.label_value(self.prefix),
            names.QUEUE_LABEL: names.label_value(self.queue),
            names.JOB_LABEL: names.label_value(self.job_id),
            names.ATTEMPT_LABEL: str(self.attempt),
            names.TASK_LABEL: names.label_value(self.task),
        }

    def annotations(self) -> dict[str, str]:
        return {
            names.PREFIX_ANNOTATION: self.prefix,
            names.QUEUE_ANNOTATION: self.queue,
            names.JOB_ANNOTATION: self.job_id,
            names.CREATED_ANNOTATION: str(self.created),
            names.TASK_ANNOTATION: self.task,
        }

    def mismatch(self, job: Mapping[str, Any]) -> str | None:
        """Why an existing Job with this attempt's name is not this attempt's (None when it is)."""
        metadata = job.get("metadata") or {}
        labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
        for key, value in self.labels().items():
            if key != names.TASK_LABEL and labels.get(key) != value:
                return f"label {key}={labels.get(key)!r}, expected {value!r}"
        for key in (names.PREFIX_ANNOTATION, names.QUEUE_ANNOTATION, names.JOB_ANNOTATION, names.CREATED_ANNOTATION):
            if annotations.get(key) != self.annotations()[key]:
                return f"annotation {key}={annotations.get(key)!r}, expected {self.annotations()[key]!r}"
        return None


def build(attempt: Attempt, options: JobOptions, timeout: float | None, events_maxlen: int) -> dict[str, Any]:
    """The Job for ``attempt``: the generated manifest, ``options.job_template`` merged over it, and then
    the reserved parts applied again (name, namespace, taskmesh's labels, ``restartPolicy: Never``,
    ``backoffLimit: 0`` since taskmesh counts attempts itself, and the ``TASKMESH_*`` variables)."""
    labels = {**options.labels, **attempt.labels()}
    annotations = {**options.annotations, **attempt.annotations()}
    container: dict[str, Any] = {
        "name": names.CONTAINER,
        "image": options.image,
        "command": list(options.command or DEFAULT_COMMAND),
        "env": [*_reserved_env(attempt, options, events_maxlen), *_user_env(options)],
    }
    if options.args is not None:
        container["args"] = list(options.args)
    if options.env_from:
        container["envFrom"] = [
            {"secretRef" if kind == "secret" else "configMapRef": {"name": name}} for kind, name in options.env_from
        ]
    if options.resources:
        container["resources"] = copy.deepcopy(dict(options.resources))
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod["tolerations"] = [copy.deepcopy(dict(t)) for t in options.tolerations]
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in options.image_pull_secrets]
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": {**labels, names.RUN_LABEL: attempt.name}}, "spec": pod},
    }
    if options.annotations:
        spec["template"]["metadata"]["annotations"] = dict(options.annotations)
    if options.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = options.ttl_seconds_after_finished
    if timeout is not None:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(timeout))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": attempt.name,
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }
    merged: dict[str, Any] = merge(job, options.job_template)
    _reapply(merged, attempt, options, events_maxlen)
    return merged


def _reserved_env(attempt: Attempt, options: JobOptions, events_maxlen: int) -> list[dict[str, Any]]:
    values = {
        "TASKMESH_PREFIX": attempt.prefix,
        "TASKMESH_QUEUE": attempt.queue,
        "TASKMESH_JOB_ID": attempt.job_id,
        "TASKMESH_JOB_ATTEMPT": str(attempt.attempt),
        "TASKMESH_JOB_TOKEN": str(attempt.token),
        "TASKMESH_TASK": attempt.task,
        "TASKMESH_TASK_MODULE": attempt.module,
        "TASKMESH_RESULT_KEY": attempt.result_key,
        "TASKMESH_RESULT_TTL": str(RESULT_TTL),
        "TASKMESH_EVENTS_MAXLEN": str(events_maxlen),
    }
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in values.items()]
    if options.redis_url_secret is not None:
        env.append({"name": "TASKMESH_REDIS_URL", "valueFrom": options.redis_url_secret.env_source()})
    else:
        env.append({"name": "TASKMESH_REDIS_URL", "value": options.redis_url})
    return env


def _user_env(options: JobOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for name, value in options.env.items():
        if isinstance(value, str):
            env.append({"name": name, "value": value})
        else:
            env.append({"name": name, "valueFrom": value.env_source()})
    return env


def merge(base: Any, override: Any) -> Any:
    """``override`` deep-merged over ``base``: mappings key by key; lists of named items (containers,
    env, volumes, ...) item by item by ``name``; any other value replaced. Neither input is changed."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = {key: copy.deepcopy(value) for key, value in base.items()}
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if _named_list(base) and _named_list(override):
        merged = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in override:
            if item["name"] in index:
                merged[index[item["name"]]] = merge(merged[index[item["name"]]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(override)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) and "name" in item for item in value)


def _reapply(job: dict[str, Any], attempt: Attempt, options: JobOptions, events_maxlen: int) -> None:
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    metadata = job.setdefault("metadata", {})
    metadata["name"], metadata["namespace"] = attempt.name, options.namespace
    metadata.setdefault("labels", {}).update(attempt.labels())
    metadata.setdefault("annotations", {}).update(attempt.annotations())
    spec = job.setdefault("spec", {})
    spec["backoffLimit"], spec["completions"], spec["parallelism"] = 0, 1, 1
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {}).setdefault("labels", {}).update(
        {**attempt.labels(), names.RUN_LABEL: attempt.name}
    )
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    containers = pod.setdefault("containers", [])
    container = next((c for c in containers if c.get("name") == names.CONTAINER), None)
    if container is None:
        container = {"name": names.CONTAINER, "image": options.image}
        containers.insert(0, container)
    reserved = _reserved_env(attempt, options, events_maxlen)
    taken = {item["name"] for item in reserved}
    container["env"] = [*reserved, *(e for e in container.get("env") or [] if e.get("name") not in taken)]
