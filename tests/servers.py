"""redis-server processes for the connection tests: plain, TLS, Sentinel and Cluster, on free loopback ports.

Every helper here is stopped by the fixture that started it (a context manager or ``stop()`` in a finalizer).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis

from taskmesh.embedded import find_server, free_port
from taskmesh.store.connect import wait_ready
from taskmesh.testing import wait_until

START_TIMEOUT = 10.0


class Server:
    """One redis-server (or Sentinel) child process on 127.0.0.1.

    ``args`` are redis-server options (``"--appendonly", "yes"``); ``conn_kwargs`` are what a client needs
    besides the port to talk to it (TLS files, a password), used to see when it is ready.
    """

    def __init__(
        self,
        workdir: Path,
        *args: str,
        port: int | None = None,
        sentinel: bool = False,
        conn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.args = args
        self.sentinel = sentinel
        self.conn_kwargs = conn_kwargs or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain connection to this process, for the test's own admin commands."""
        options = {"socket_connect_timeout": 2, "socket_timeout": 5, "decode_responses": True, **self.conn_kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, **{**options, **kwargs})

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        common = ["--bind", "127.0.0.1", "--dir", str(self.workdir), "--logfile", "server.log"]
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"  # Sentinel rewrites its config file: it must be its own
            command = [find_server(), str(conf), "--sentinel", "--port", str(self.port), *common, *self.args]
        else:
            command = [find_server(), "--port", str(self.port), "--save", "", *common, *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        conn = self.client(socket_timeout=1, socket_connect_timeout=0.5)
        try:
            outcome = wait_ready(conn, self.process, START_TIMEOUT)
        finally:
            conn.close()
        if outcome == "exited":
            raise RuntimeError(f"redis-server exited at start: {self.log()}")
        if outcome == "timeout":
            self.stop()
            raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log()}")
        return self

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final write."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a frozen process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- TLS ---------------------------------------------------------------------------


def make_certs(directory: Path, name: str = "ca") -> dict[str, Path]:
    """A CA and a server certificate it signed (for 127.0.0.1 and localhost), made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    kinds = ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    paths = {kind: directory / f"{name}-{kind}" for kind in kinds}
    ext = directory / f"{name}-ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # quicker than RSA
    openssl("req", "-x509", *new_key, "-days", "2", "-subj", f"/CN=taskmesh test {name}",
            "-keyout", paths["ca.key"], "-out", paths["ca.crt"])  # fmt: skip
    openssl("req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", paths["server.key"], "-out", paths["server.csr"])
    openssl("x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", paths["server.crt"])  # fmt: skip
    return {"ca": paths["ca.crt"], "cert": paths["server.crt"], "key": paths["server.key"]}


def tls_server(workdir: Path, certs: dict[str, Path]) -> Server:
    """A server that speaks only TLS (``--port 0``), and does not ask clients for certificates."""
    port = free_port()
    args = ("--port", "0", "--tls-port", str(port), *_tls_files(certs))
    # "--port 0" comes after Server's own "--port" and wins: the TLS port is the only one.
    return Server(workdir, *args, port=port, conn_kwargs={"ssl": True, "ssl_ca_certs": str(certs["ca"])})


def _tls_files(certs: dict[str, Path]) -> tuple[str, ...]:
    return (
        *("--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"])),
        *("--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no"),
    )


# -- Sentinel ----------------------------------------------------------------------


def sentinel_server(workdir: Path, master_port: int, service: str = "mymaster") -> Server:
    """A Sentinel watching the master on ``master_port``: quorum 1, down after 1 s, quick failover."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sentinel.conf").write_text(
        f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {service} 1000\n"
        f"sentinel failover-timeout {service} 5000\n"
        f"sentinel parallel-syncs {service} 1\n"
    )
    return Server(workdir, sentinel=True)


# -- Cluster -----------------------------------------------------------------------

CLUSTER_SLOTS = 16384


class Cluster:
    """Masters with ``--cluster-enabled yes``, slots split evenly, joined with CLUSTER MEET."""

    def __init__(self, workdir: Path, masters: int = 3, tls_certs: dict[str, Path] | None = None) -> None:
        self.bus_ports = [free_port() for _ in range(masters)]  # not port + 10000, which may be taken
        self.nodes = [
            Server(
                workdir / f"node{i}",
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[i])),
                *("--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"),
            )
            for i in range(masters)
        ]
        self.tls_ports: list[int] = []
        if tls_certs is not None:  # TLS on a port of its own (the plain one stays for the admin connections)
            for node in self.nodes:
                self.tls_ports.append(free_port())
                node.args += ("--tls-port", str(self.tls_ports[-1]), "--tls-cluster", "yes", *_tls_files(tls_certs))
        self._stack = ExitStack()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                self._stack.enter_context(node)
            share = CLUSTER_SLOTS // len(self.nodes)
            for i, node in enumerate(self.nodes):
                last = CLUSTER_SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
                with node.client() as conn:
                    conn.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            with self.nodes[0].client() as first:
                for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                    first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
            wait_until(self._ready, timeout=START_TIMEOUT, interval=0.05, message="cluster state ok on every node")
            return self
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client() as conn:
                info = conn.execute_command("CLUSTER", "INFO")
                text = info if isinstance(info, str) else str(info)
                if "cluster_state:ok" not in text or f"cluster_known_nodes:{len(self.nodes)}" not in text:
                    return False
        return True

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def started(*servers: Server) -> Iterator[list[Server]]:
    """Start ``servers`` in order; stop every one started, whatever happens."""
    with ExitStack() as stack:
        yield [stack.enter_context(server) for server in servers]


def until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    """``wait_until`` that treats a Redis error from ``predicate`` as "not yet"."""

    def attempt() -> Any:
        try:
            return predicate()
        except (redis.exceptions.RedisError, OSError):
            return False

    return wait_until(attempt, timeout=timeout, interval=0.05, message=message)
