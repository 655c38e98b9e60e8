"""TLS: ``rediss://`` checks the server's certificate (against ``ssl_ca_certs``, else the system's CAs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Cluster, Server, make_certs, tls_server

from taskmesh import Client, RedisUnavailable, task
from taskmesh.testing import running_worker

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}


@task(name="tls.echo")
def echo(value: int) -> int:
    return value


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server(tmp_path: Path, certs: dict[str, Path]) -> Iterator[Server]:
    with tls_server(tmp_path / "redis", certs) as redis_server:
        yield redis_server


def url(server: Server, query: str = "") -> str:
    return f"rediss://127.0.0.1:{server.port}/0{query}"


def test_worker_and_producer_run_jobs_over_tls_with_the_ca_checked(server: Server, certs: dict[str, Path]) -> None:
    client = Client(url(server, f"?ssl_ca_certs={certs['ca']}"), prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        with running_worker(client, [echo], **FAST):
            assert client.enqueue(echo, 1).result(timeout=10) == 1
            assert asyncio.run(client.aenqueue(echo, 2)).result(timeout=10) == 2
    finally:
        client.close()
    with server.client() as conn:  # the only port is the TLS one
        assert conn.config_get("port")["port"] == "0"


def test_a_server_certificate_from_another_ca_is_refused(server: Server, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other", name="other")
    client = Client(url(server, f"?ssl_ca_certs={other['ca']}"), prefix="wrongca")
    with pytest.raises(RedisUnavailable, match="certificate verify failed"):
        client.enqueue(echo, 1)
    with pytest.raises(RedisUnavailable, match="certificate verify failed"):
        asyncio.run(client.aenqueue(echo, 1))


def test_the_certificate_is_checked_by_default(server: Server) -> None:
    client = Client(url(server), prefix="noca")  # the system's CAs do not know the test CA
    with pytest.raises(RedisUnavailable, match="certificate verify failed"):
        client.enqueue(echo, 1)


def test_a_cluster_over_tls(tmp_path: Path, certs: dict[str, Path]) -> None:
    with Cluster(tmp_path / "cluster", tls_certs=certs) as cluster:
        nodes = ",".join(f"127.0.0.1:{port}" for port in cluster.tls_ports)
        client = Client(f"rediss+cluster://{nodes}?ssl_ca_certs={certs['ca']}", prefix=f"t{uuid.uuid4().hex[:12]}")
        try:
            with running_worker(client, [echo], **FAST):
                assert client.enqueue(echo, 3).result(timeout=10) == 3
        finally:
            client.close()
