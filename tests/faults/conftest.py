"""Fixtures of the fault tests: a ledger per test, worker processes that are always killed at the end,
and a report of the measured figures (``faults-report.json`` in the test's tmp dir, one line per test in
``faults-summary.jsonl`` under pytest's base tmp dir, stdout with ``-s``, and the terminal summary)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Client
from taskmesh.client import set_default_client

from .ledger import LEDGER_ENV, Ledger
from .processes import WorkerPool

#: Short leases, so the tests see recovery within a second or two.
FAST: dict[str, Any] = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}
#: Long enough to keep every event of a test: the checker reads the whole stream.
EVENTS_MAXLEN = 200_000

Report = Callable[..., None]
_reports: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    path = tmp_path / "ledger"
    path.mkdir()
    monkeypatch.setenv(LEDGER_ENV, str(path))  # for tasks run by in-process workers
    return Ledger(path)


@pytest.fixture
def fault_client(taskmesh_redis_url: str, taskmesh_prefix: str) -> Iterator[Client]:
    base = Client(taskmesh_redis_url, prefix=taskmesh_prefix).settings
    client = Client(settings=base.replace(events_maxlen=EVENTS_MAXLEN))
    set_default_client(client)  # a task's own .enqueue() must never reach another Redis
    yield client
    set_default_client(None)
    client.close()


@pytest.fixture
def workers(fault_client: Client, ledger: Ledger, tmp_path: Path) -> Iterator[Callable[..., WorkerPool]]:
    """``workers(**settings)``: a pool of worker processes with the FAST settings plus ``settings``, running
    ``taskmesh run <module>`` (``launcher`` is what follows the interpreter: ``-m taskmesh`` by default)."""
    pools: list[WorkerPool] = []

    def make(
        module: str = "faults.tasks", launcher: tuple[str, ...] = ("-m", "taskmesh"), **settings: Any
    ) -> WorkerPool:
        merged = {**FAST, "events_maxlen": EVENTS_MAXLEN, **settings}
        logs = tmp_path / f"logs-{len(pools)}"
        pool = WorkerPool(fault_client, ledger.path, logs, merged, module=module, launcher=launcher)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def report(request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """``report(**figures)``: record what a test measured, for the lead and the README."""

    def write(**figures: Any) -> None:
        name = request.node.name
        text = json.dumps(figures, sort_keys=True)
        (tmp_path / "faults-report.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        with (tmp_path_factory.getbasetemp() / "faults-summary.jsonl").open("a") as summary:
            summary.write(json.dumps({"test": name, **figures}, sort_keys=True) + "\n")
        print(f"\nFAULTS {name}: {text}")
        _reports.append((name, figures))

    return write


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reports:
        return
    terminalreporter.section("fault injection: measured figures")
    for name, figures in _reports:
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True)}")
