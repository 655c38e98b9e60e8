"""Fixtures of the ``k8s`` runner tests: a fake API server per test, a kubeconfig pointing at it, and workers
with the ``k8s`` runner configured for it (short watches and fast retries, so faults resolve in seconds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from taskmesh_k8s import K8sConfig, K8sPlugin

from taskmesh import Client, Registry, Task, Worker
from taskmesh.testing import RunningWorker

from .fake import FakeKubernetes

TESTS_DIR = Path(__file__).resolve().parent.parent
FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes({"PYTHONPATH": str(TESTS_DIR)}) as fake:
        yield fake
        if not getattr(fake, "expect_invalid", False):
            assert fake.invalid == [], "a generated manifest failed validation"


@pytest.fixture
def kubeconfig(fake_k8s: FakeKubernetes, tmp_path: Path) -> Path:
    return fake_k8s.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def k8s_config(kubeconfig: Path) -> K8sConfig:
    return K8sConfig(kubeconfig=str(kubeconfig), watch_seconds=2, request_timeout=3, retry_base=0.05, retry_cap=0.5)


@pytest.fixture
def k8s_worker(taskmesh_client: Client, k8s_config: K8sConfig) -> Iterator[Callable[..., RunningWorker]]:
    """``k8s_worker(tasks, config=None, **settings)``: a worker thread with the ``k8s`` runner, stopped afterwards."""
    started: list[RunningWorker] = []

    def start(tasks: Iterable[Task[Any, Any]], config: K8sConfig | None = None, **settings: Any) -> RunningWorker:
        registry = Registry(tasks)
        cfg = taskmesh_client.settings.replace(queues=tuple(registry.queues), **settings)
        worker = Worker.create(registry, cfg, plugins=[K8sPlugin(config or k8s_config)], entry_points=False)
        running = RunningWorker(worker).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
