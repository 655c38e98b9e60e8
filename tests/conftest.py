"""Fixtures shared by the test modules: a Redis Cluster for the session, and the marks.

A module marked ``pytestmark = pytest.mark.also_cluster`` runs each test that uses the taskmesh fixtures
twice: against the session's single server (``[server]``) and against a 3-master Redis Cluster (``[cluster]``).

Marks for choosing a subset (``./dev quick`` runs ``-m "not slow"``; ``./dev test`` runs everything):
``faults`` (tests/faults/: processes killed, servers frozen), ``k8s`` (tests/k8s/: the Kubernetes runner
against a fake API server), ``cluster`` (every test that runs on a Redis Cluster: the ``[cluster]`` runs and
tests/test_cluster.py), ``servers`` (tests that start servers of their own: restarts, Sentinel, TLS) and
``slow``, which each of the others implies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Cluster

from taskmesh.embedded import EmbeddedRedis, free_port


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "also_cluster: also run the module's taskmesh tests against a Redis Cluster",
        "faults: fault injection (tests/faults/)",
        "k8s: the Kubernetes runner against a fake API server (tests/k8s/)",
        "cluster: runs on a Redis Cluster",
        "servers: starts Redis servers of its own (restarts, Sentinel, TLS)",
        "slow: left out of the fast subset (./dev quick); implied by faults, k8s, cluster and servers",
    ):
        config.addinivalue_line("markers", line)


#: Directories and modules whose tests carry a mark, by the path relative to tests/.
MARKED_PATHS = {
    "faults": ("faults/",),
    "k8s": ("k8s/",),
    "cluster": ("test_cluster.py",),
    "servers": ("test_redis_restart.py", "test_sentinel.py", "test_tls.py", "test_bench_smoke.py"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        where = item.path.relative_to(tests).as_posix()
        marks = {mark for mark, paths in MARKED_PATHS.items() if where.startswith(paths)}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("taskmesh_redis_url") == "cluster":
            marks.add("cluster")
        if "redis_cluster" in getattr(item, "fixturenames", ()):
            marks.add("cluster")
        for mark in sorted(marks) + (["slow"] if marks else []):
            item.add_marker(mark)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("also_cluster") and "taskmesh_redis_url" in metafunc.fixturenames:
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
