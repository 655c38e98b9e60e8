"""One frozen Settings object, fed by defaults < ``[tool.taskmesh]`` < ``TASKMESH_*`` env < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .store.keys import check_name

ENV_PREFIX = "TASKMESH_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a client or worker. Times are seconds."""

    redis_url: str = "redis://localhost:6379/0"
    prefix: str = "taskmesh"
    #: Task modules to import (``taskmesh run`` arguments; empty: the ``taskmesh.tasks`` entry points).
    modules: tuple[str, ...] = ()
    #: Queues a worker leases from, in order of preference.
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    #: A lease not renewed for this long is stalled and the job goes to another worker.
    lease_seconds: float = 6.0
    #: How often a worker renews all its leases (one call).
    renew_interval: float = 2.0
    #: How often each worker looks for stalled jobs.
    sweep_interval: float = 2.0
    #: A job whose lease expired more often than this fails as "worker lost".
    max_stalls: int = 2
    #: On SIGTERM/SIGINT, running jobs get this long to finish before they are handed back.
    grace_period: float = 10.0
    max_payload_bytes: int = 512 * 1024
    #: Retention of finished jobs: keep at most N (-1: no limit) and none older than the age (-1: forever).
    completed_keep: int = 10_000
    completed_age: float = 24 * 3600
    failed_keep: int = 100_000
    failed_age: float = 7 * 24 * 3600
    #: Approximate length the per-queue event stream is trimmed to.
    events_maxlen: int = 10_000
    #: Longest an idle worker blocks before looking again (a safety net; enqueue wakes it at once).
    idle_timeout: float = 5.0
    #: Run the scheduler loop (fires schedules' ticks; any number of workers may, each tick fires once).
    scheduler: bool = True
    #: At start-up, remove stored schedules declared in code that no task of this worker declares.
    prune_schedules: bool = False
    #: Event sinks a worker feeds, by registered name (``log`` is built in; plugins add others).
    sinks: tuple[str, ...] = ()
    #: Events each sink may have waiting; when full, new events for that sink are dropped and counted.
    sink_buffer: int = 10_000
    #: Entry-point plugins to load, by entry-point name (empty: every installed one).
    plugins: tuple[str, ...] = ()
    #: Entry-point plugins never to load, by entry-point name.
    disable_plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            check_name("prefix", self.prefix)
            for queue in self.queues:
                check_name("queue name", queue)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if not self.queues:
            raise ConfigurationError("at least one queue is needed")
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, not {self.concurrency}")
        if not 0 < self.renew_interval < self.lease_seconds:
            raise ConfigurationError(
                f"renew_interval ({self.renew_interval}s) must be shorter than lease_seconds ({self.lease_seconds}s)"
            )
        for name in ("sweep_interval", "grace_period", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0")
        for name in ("max_payload_bytes", "events_maxlen", "sink_buffer"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1")
        if self.max_stalls < 0:
            raise ConfigurationError(f"max_stalls must be >= 0, not {self.max_stalls}")

    def __repr__(self) -> str:
        """The dataclass repr, with the password in ``redis_url`` masked."""
        from .store.connect import redact  # not at the top: connect imports this module

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["redis_url"] = redact(self.redis_url)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        pyproject: Path | None = Path("pyproject.toml"),
    ) -> Settings:
        """Build settings from (lowest first) defaults, ``[tool.taskmesh]``, ``TASKMESH_*`` and ``overrides``.

        ``None`` values in ``overrides`` are ignored, so unset CLI flags fall through.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if pyproject is not None and pyproject.is_file():
            try:
                with pyproject.open("rb") as fh:
                    table = tomllib.load(fh).get("tool", {}).get("taskmesh", {})
            except tomllib.TOMLDecodeError as exc:
                raise ConfigurationError(f"{pyproject}: invalid TOML: {exc}") from None
            if not isinstance(table, dict):
                raise ConfigurationError(f"{pyproject}: [tool.taskmesh] must be a table")
            values.update({k.replace("-", "_"): v for k, v in table.items()})
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        typed = {name: coerce(name, known[name].type, value) for name, value in values.items()}
        return cls(**typed)


def coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` (from TOML or the environment) as the type ``kind`` names; a ConfigurationError if it cannot be."""
    kind = str(kind)
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean")
        if kind in ("int", "float") and isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(f"setting {name}: cannot read {value!r} as {kind}") from None
