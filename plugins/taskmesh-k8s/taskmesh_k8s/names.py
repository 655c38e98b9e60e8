"""Names the runner gives things: Job names, label values and label keys, and the result key in Redis."""

from __future__ import annotations

import hashlib
import re

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
MAX_NAME = 63

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "taskmesh"
PREFIX_LABEL = "taskmesh.io/prefix"
QUEUE_LABEL = "taskmesh.io/queue"
JOB_LABEL = "taskmesh.io/job"
ATTEMPT_LABEL = "taskmesh.io/attempt"
TASK_LABEL = "taskmesh.io/task"
#: On the pod template: the name of the Job the pod belongs to (pods are found by it).
RUN_LABEL = "taskmesh.io/job-name"
#: Annotations keep the exact values that labels can only hold sanitized or hashed.
PREFIX_ANNOTATION = "taskmesh.io/prefix"
QUEUE_ANNOTATION = "taskmesh.io/queue"
JOB_ANNOTATION = "taskmesh.io/job-id"
CREATED_ANNOTATION = "taskmesh.io/job-created"
TASK_ANNOTATION = "taskmesh.io/task"
#: The container that runs the task; a ``job_template`` refers to it by this name.
CONTAINER = "task"


def is_dns_label(value: str) -> bool:
    return len(value) <= MAX_NAME and DNS_LABEL.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_NAME and LABEL_VALUE.fullmatch(value) is not None


def is_label_key(key: str) -> bool:
    """``[prefix/]name``: a DNS subdomain prefix of at most 253 characters, a name like a label value."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(DNS_LABEL.fullmatch(part) for part in prefix.split("."))):
        return False
    return bool(name) and is_label_value(name)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def job_name(prefix: str, queue: str, job_id: str, created: int, attempt: int) -> str:
    """The Job of one attempt: ``tm-<readable part of the id>-<attempt>-<hash>``, a DNS-1123 label of at
    most 63 characters. The hash covers prefix, queue, id and the job's creation time, so the same id in
    another queue, or enqueued again after the first job was removed, gets other Jobs."""
    suffix = f"-{attempt}-{_digest(prefix, queue, job_id, str(created))[:12]}"
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")
    slug = slug[: MAX_NAME - len("tm-") - len(suffix)].rstrip("-")
    return f"tm-{slug}{suffix}" if slug else f"tm{suffix}"


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a readable part of it plus a hash (at most 63 characters)."""
    if is_label_value(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:50].strip("-_.")
    digest = _digest(text)[:12]
    return f"{slug}-{digest}" if slug else digest


def result_key(prefix: str, queue: str, name: str) -> str:
    """Where the pod leaves its outcome for the worker: in the queue's hash tag, so in its Cluster slot."""
    return f"{{{prefix}:{queue}}}:k8s:{name}"
