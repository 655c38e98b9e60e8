"""Start-up checks refuse a Redis that could drop jobs, and report persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmesh import ConfigurationError, Registry, Settings, Worker
from taskmesh.embedded import EmbeddedRedis


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path, extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        yield server


def test_worker_refuses_redis_whose_policy_evicts_keys(evicting_redis: EmbeddedRedis) -> None:
    worker = Worker.create(Registry(), Settings(redis_url=evicting_redis.url), burst=True, entry_points=False)
    with pytest.raises(ConfigurationError, match=r"allkeys-lru.*noeviction"):
        asyncio.run(worker.run())


def test_worker_reports_aof_persistence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with EmbeddedRedis(tmp_path, appendfsync="always") as server:
        worker = Worker.create(Registry(), Settings(redis_url=server.url), burst=True, entry_points=False)
        with caplog.at_level("INFO", logger="taskmesh.worker"):
            asyncio.run(worker.run())
    assert any("redis persistence AOF always" in r.getMessage() for r in caplog.records)
