"""Fixtures shared by the test modules: a Redis Cluster for the session, and the ``cluster`` mark.

A module marked ``pytestmark = pytest.mark.cluster`` runs each test that uses the taskmesh fixtures
twice: against the session's single server (``[server]``) and against a 3-master Redis Cluster (``[cluster]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Cluster

from taskmesh.embedded import EmbeddedRedis, free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: also run the module's taskmesh tests against a Redis Cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("cluster") and "taskmesh_redis_url" in metafunc.fixturenames:
        metafunc.parametrize("taskmesh_redis_url", ["server", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def taskmesh_redis_url(request: pytest.FixtureRequest, taskmesh_redis_url: str) -> str:
    """The plugin's server, or the session's cluster for a ``[cluster]`` run of a ``cluster``-marked module."""
    if getattr(request, "param", "server") == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return taskmesh_redis_url


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private redis-server with AOF (fsync always) on a fixed port, so it can be stopped or killed and
    started again on the same data."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()
