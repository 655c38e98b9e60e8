"""Tasks the ``k8s`` runner tests run; the fake API server's pods import this module (``k8s.tasks``)."""

from __future__ import annotations

import os
import time

from taskmesh import Job, Retry, SlowDown, task

IMAGE = {"image": "registry.example/app:1.0"}


@task(name="k8s.add", runner="k8s", runner_options=IMAGE)
def add(job: Job, x: int, y: int) -> int:
    job.progress(50)
    job.log(f"adding {x} and {y}")
    return x + y


@task(name="k8s.fail", runner="k8s", runner_options=IMAGE)
def fail(message: str) -> None:
    print("about to fail", flush=True)
    raise ValueError(message)


@task(name="k8s.sleep", runner="k8s", runner_options=IMAGE)
def sleep(seconds: float) -> str:
    time.sleep(seconds)  # the pod's work: the tests stop it (cancel, timeout, kill) or let it finish
    return "slept"


@task(name="k8s.overdue", runner="k8s", runner_options=IMAGE, timeout=1)
def overdue() -> None:
    time.sleep(30)


@task(name="k8s.flaky", runner="k8s", runner_options=IMAGE, retries=1, backoff=0)
def flaky(job: Job) -> int:
    if job.attempt == 1:
        raise Retry(0, "first attempt fails")
    return job.attempt


@task(name="k8s.busy", runner="k8s", runner_options=IMAGE)
def busy(job: Job) -> str:
    if job.attempt == 1 and not os.environ.get("K8S_TEST_SECOND_RUN"):
        raise SlowDown(0, "downstream busy")
    return "done"


@task(
    name="k8s.env",
    runner="k8s",
    runner_options={
        **IMAGE,
        "env": {"GREETING": "hello", "API_TOKEN": {"secret": "creds", "key": "token"}},
        "env_from": [{"config_map": "settings"}],
    },
)
def env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("GREETING", "API_TOKEN", "MODE")}
