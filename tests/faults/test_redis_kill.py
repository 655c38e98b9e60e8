"""kill -9 of redis-server (AOF, fsync always) during a stream of enqueues: every acknowledged job survives and runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from taskmesh import Call, Client, RedisUnavailable, Settings
from taskmesh.embedded import EmbeddedRedis
from taskmesh.testing import running_worker, wait_until

from .conftest import EVENTS_MAXLEN, FAST, Report
from .ledger import Ledger, record, settle
from .tasks import short

KILLS = 10
#: Acknowledged enqueues between two kills, so every kill lands in a running stream.
BETWEEN_KILLS = 30


@pytest.fixture
def server(aof_server: EmbeddedRedis) -> EmbeddedRedis:
    return aof_server


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[Client]:
    client = Client(settings=Settings(redis_url=server.url, prefix="faults", events_maxlen=EVENTS_MAXLEN))
    yield client
    client.close()


class Producer:
    """Enqueues jobs one by one; a job counts (a ledger line) only once ``submit`` returned.

    A failed call is retried with the same job id until acknowledged, so no job exists that the
    ledger does not know of (an enqueue whose reply was lost is deduplicated by its id).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.acknowledged: list[str] = []
        self.retries = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="faults-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                job_id = f"job-{len(self.acknowledged)}"
                self._submit(Call("faults.short", [2], job_id=job_id))
                record("enqueued", job_id)
                self.acknowledged.append(job_id)
        except BaseException as exc:
            self.error = exc

    def _submit(self, call: Call) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.submit(call)
                return
            except (RedisUnavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.01)  # Redis is restarting: a retry pause, bounded by the deadline


def kill_and_restart(server: EmbeddedRedis) -> None:
    assert server.process is not None
    server.process.kill()
    server.process.wait(5)
    server.stop()  # forgets the killed process
    server.start()


def test_acknowledged_jobs_survive_redis_kill_9_and_complete(
    server: EmbeddedRedis, client: Client, ledger: Ledger, report: Report
) -> None:
    producer = Producer(client)
    started = time.monotonic()
    with running_worker(client, [short], **FAST) as running:
        producer.start()
        try:
            for _ in range(KILLS):
                target = len(producer.acknowledged) + BETWEEN_KILLS
                wait_until(
                    lambda t=target: len(producer.acknowledged) >= t or producer.error,  # type: ignore[misc]
                    timeout=15,
                    message="enqueues acknowledged between two kills",
                )
                kill_and_restart(server)
        finally:
            producer.stop()
        assert producer.error is None, producer.error
        acknowledged = [line["job"] for line in ledger.events("enqueued")]
        assert acknowledged == producer.acknowledged
        verdict = settle(client, ledger, acknowledged, timeout=20)
    elapsed = time.monotonic() - started
    report(
        kills=KILLS,
        acknowledged=len(acknowledged),
        enqueue_retries=producer.retries,
        refused_updates=running.stats.refused if running.stats else None,
        seconds=round(elapsed, 2),
        **verdict.summary(),
    )
    verdict.assert_sound()
