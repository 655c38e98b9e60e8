"""ACL: a Redis user restricted to one prefix runs a worker and a producer, and cannot touch other prefixes.

The rule is the one README.md recommends (see ``acl_rule``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import Server

from taskmesh import Client, task
from taskmesh.testing import running_worker, wait_until

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}
COMMANDS = "-@all +@read +@write +@connection -@dangerous -@keyspace +evalsha +script|load +time +info"


def acl_rule(prefix: str, unblock: bool = True) -> list[str]:
    """``ACL SETUSER`` arguments: the prefix's keys (``{prefix:queue}:...`` and ``{prefix}:...``), no channels,
    the command categories taskmesh uses, and ``CLIENT UNBLOCK`` so a stopping worker ends its wait at once."""
    rule = ["on", ">secret", "resetkeys", f"~{{{prefix}[:}}]*", "resetchannels", *COMMANDS.split()]
    return [*rule, "+client|unblock"] if unblock else rule


@task(name="acl.echo")
def echo(value: int) -> int:
    return value


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path / "redis") as redis_server:
        yield redis_server


def user_url(server: Server, user: str) -> str:
    return f"redis://{user}:secret@127.0.0.1:{server.port}/0"


def test_a_user_limited_to_its_prefix_runs_jobs_and_cannot_read_another_prefix(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskmesh")
    mine, theirs = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", *acl_rule(mine))
    other = Client(server.url, prefix=theirs)  # the default user, unrestricted
    their_job = other.enqueue(echo, 0)
    client = Client(user_url(server, "app"), prefix=mine)
    try:
        with running_worker(client, [echo], idle_timeout=5, **FAST):
            assert client.enqueue(echo, 1).result(timeout=10) == 1
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3  # CLIENT UNBLOCK ended the 5 s wait
        # CONFIG is forbidden: the start-up check warns instead of refusing to start.
        assert "cannot read the server's configuration" in caplog.text

        with pytest.raises(redis.exceptions.NoPermissionError):
            client.redis.hget(other.keys("default").jobs, their_job.id)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.redis.smembers(f"{{{theirs}}}:queues")
        with pytest.raises(redis.exceptions.NoPermissionError):
            Client(user_url(server, "app"), prefix=theirs).enqueue(echo, 2)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.redis.flushall()
        assert other.status(their_job.id) is not None  # untouched
        assert other.counts()["waiting"] == 1
    finally:
        client.close()
        other.close()


def test_without_client_unblock_a_worker_still_stops_once_its_wait_times_out(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskmesh")
    prefix = f"a{uuid.uuid4().hex[:8]}"
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "plain", *acl_rule(prefix, unblock=False))
    client = Client(user_url(server, "plain"), prefix=prefix)
    try:
        with running_worker(client, [echo], idle_timeout=1, **FAST) as running:
            assert client.enqueue(echo, 1).result(timeout=10) == 1
            # Stop while the idle worker's lease is queued behind its wait: the case CLIENT UNBLOCK serves.
            # (on a connection whose client id is known: the first wait may still be connecting)
            waiting = lambda: running.worker._listening and running.worker._blocking_id is not None  # noqa: E731
            wait_until(waiting, timeout=5, interval=0.001, message="worker waiting")
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 4
        assert "cannot end the wake-up wait early" in caplog.text
    finally:
        client.close()
