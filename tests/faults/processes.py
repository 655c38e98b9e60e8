"""Worker processes for the fault tests: ``taskmesh run faults.tasks`` children, killed at will,
optionally watched by a monitor that starts a new worker for every one that died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskmesh import Client
from taskmesh.testing import wait_until

from .ledger import LEDGER_ENV

TESTS_DIR = Path(__file__).resolve().parent.parent


class WorkerPool:
    """Worker processes on one Redis and prefix. ``close()`` kills every process it started."""

    def __init__(
        self,
        client: Client,
        ledger: Path,
        logs: Path,
        settings: Mapping[str, Any],
        module: str = "faults.tasks",
        launcher: Sequence[str] = ("-m", "taskmesh"),
    ) -> None:
        self.client = client
        self.module = module
        self.launcher = list(launcher)
        self.logs = logs
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
            LEDGER_ENV: str(ledger),
            "TASKMESH_REDIS_URL": client.settings.redis_url,
            "TASKMESH_PREFIX": client.settings.prefix,
            **{f"TASKMESH_{name.upper()}": str(value) for name, value in settings.items()},
        }
        self.started: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start one worker process (without waiting for it)."""
        with self._lock:
            self.logs.mkdir(parents=True, exist_ok=True)
            with (self.logs / f"worker-{len(self.started)}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, *self.launcher, "run", self.module, "--log-level", "WARNING"],
                    cwd=self.logs,
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            self.started.append(proc)
            return proc

    def start(self) -> subprocess.Popen[bytes]:
        """Start one worker process and wait until it has registered with Redis."""
        proc = self.spawn()
        wait_until(lambda: self.registered(proc), timeout=15, message=f"worker process {proc.pid} registered")
        return proc

    def registered(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker process {proc.pid} exited with {proc.returncode}: see {self.logs}")
        return any(f":{proc.pid}:" in worker for worker in self.client.workers())

    def alive(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [proc for proc in self.started if proc.poll() is None]

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.logs / f"worker-{self.started.index(proc)}.log").read_text(errors="replace")

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """``kill -9`` and reap."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def keep(self, size: int) -> None:
        """Start ``size`` workers and a monitor that replaces each one that dies."""
        for _ in range(size):
            self.spawn()
        self._monitor = threading.Thread(target=self._watch, args=(size,), name="faults-monitor", daemon=True)
        self._monitor.start()

    def _watch(self, size: int) -> None:
        while not self._closing.wait(0.02):
            missing = size - len(self.alive())
            for _ in range(missing):
                if self._closing.is_set():
                    return
                self.spawn()
                self.restarts += 1

    def close(self) -> None:
        """Stop the monitor, then kill every process still running (stopped ones included)."""
        self._closing.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            procs = list(self.started)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
