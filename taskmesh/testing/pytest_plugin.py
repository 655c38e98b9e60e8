"""pytest fixtures for testing taskmesh tasks against a real Redis (loaded through ``pytest11``).

- ``taskmesh_redis_url`` (session): ``$TASKMESH_TEST_REDIS_URL``, or a private embedded server.
- ``taskmesh_prefix``: a unique key prefix per test, its keys deleted afterwards.
- ``taskmesh_settings``: the settings of the client (and so of the workers) apart from the URL and prefix:
  the defaults, read from no pyproject.toml and no ``TASKMESH_*`` variable, so neither the project's
  configuration nor a developer's shell changes what a test sees. Override the fixture to test with the
  project's own: ``return Settings.load()``.
- ``taskmesh_client``: a :class:`taskmesh.Client` on that URL and prefix, also the default client.
- ``taskmesh_worker``: start a worker in a background thread: ``taskmesh_worker([tasks], **settings)``.
- ``taskmesh_drain``: run everything due in-process: ``taskmesh_drain([tasks])``; re-raises task errors.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..client import Client, set_default_client
from ..dispatch import WorkerStats
from ..embedded import EmbeddedRedis
from ..registry import Registry
from ..settings import Settings
from ..store import QueueStore
from ..task import Task
from . import RunningWorker, drain, running_worker

TEST_URL_ENV = "TASKMESH_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def taskmesh_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get(TEST_URL_ENV)
    if url:
        yield url
        return
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("taskmesh-redis")))
    with server:
        yield server.url


@pytest.fixture
def taskmesh_prefix(taskmesh_redis_url: str) -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    QueueStore(Settings(redis_url=taskmesh_redis_url, prefix=prefix)).purge()


@pytest.fixture
def taskmesh_settings() -> Settings:
    return Settings()


@pytest.fixture
def taskmesh_client(taskmesh_redis_url: str, taskmesh_prefix: str, taskmesh_settings: Settings) -> Iterator[Client]:
    client = Client(taskmesh_redis_url, prefix=taskmesh_prefix, settings=taskmesh_settings)
    set_default_client(client)
    yield client
    set_default_client(None)
    client.close()


@pytest.fixture
def taskmesh_worker(taskmesh_client: Client) -> Iterator[Callable[..., RunningWorker]]:
    stack: list[Any] = []

    def start(tasks: Registry | Iterable[Task[Any, Any]], **settings: Any) -> RunningWorker:
        cm = running_worker(taskmesh_client, tasks, **settings)
        worker = cm.__enter__()
        stack.append(cm)
        return worker

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def taskmesh_drain(taskmesh_client: Client) -> Callable[..., WorkerStats]:
    def run(tasks: Registry | Iterable[Task[Any, Any]], **kwargs: Any) -> WorkerStats:
        return drain(taskmesh_client, tasks, **kwargs)

    return run
