"""Start-up checks refuse a Redis that could drop jobs, and report persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from taskmesh import ConfigurationError, Job, Registry, Settings, Task, Worker
from taskmesh.embedded import EmbeddedRedis
from taskmesh.runners import BaseRunner


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path, extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        yield server


def test_worker_refuses_redis_whose_policy_evicts_keys(evicting_redis: EmbeddedRedis) -> None:
    worker = Worker.create(Registry(), Settings(redis_url=evicting_redis.url), burst=True, entry_points=False)
    with pytest.raises(ConfigurationError, match=r"allkeys-lru.*noeviction"):
        asyncio.run(worker.run())


class ClosingRunner(BaseRunner):
    """Records that it was closed."""

    closed = 0

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        raise AssertionError("never reached")

    @override
    async def close(self) -> None:
        self.closed += 1


def test_a_worker_refused_at_start_up_closes_its_runners(evicting_redis: EmbeddedRedis) -> None:
    settings = Settings(redis_url=evicting_redis.url)
    runner = ClosingRunner(settings)
    worker = Worker(Registry(), settings, {"inline": runner}, burst=True)
    with pytest.raises(ConfigurationError, match="noeviction"):
        asyncio.run(worker.run())
    assert runner.closed == 1


def test_worker_reports_aof_persistence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with EmbeddedRedis(tmp_path, appendfsync="always") as server:
        worker = Worker.create(Registry(), Settings(redis_url=server.url), burst=True, entry_points=False)
        with caplog.at_level("INFO", logger="taskmesh.worker"):
            asyncio.run(worker.run())
    assert any("redis persistence AOF always" in r.getMessage() for r in caplog.records)
