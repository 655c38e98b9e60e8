"""ACL: a Redis user restricted to one prefix runs a worker and a producer, and cannot touch other prefixes.

The rule is the one docs/operations/redis.md documents (read from it: see ``acl_rule``). A user missing a
command the scripts use is refused at start-up, and a script refused part-way loses no job.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import Server

from taskmesh import Client, ConfigurationError, JobState, Limit, Worker, task
from taskmesh.registry import Registry
from taskmesh.store import scripts
from taskmesh.testing import RunningWorker, running_worker, wait_until

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2}
DOCUMENTED = Path(__file__).resolve().parent.parent / "docs" / "operations" / "redis.md"


def documented_rule() -> list[str]:
    """The ``ACL SETUSER app ...`` arguments docs/operations/redis.md recommends, after the user name."""
    block = re.search(r"```\nACL SETUSER app (.*?)\n```", DOCUMENTED.read_text(), re.S)
    assert block, "docs/operations/redis.md lost its ACL SETUSER example"
    return block.group(1).split()


def acl_rule(prefix: str, unblock: bool = True, without: tuple[str, ...] = ()) -> list[str]:
    """The documented rule for ``prefix`` (``~{app[:}]*`` becomes the prefix's pattern), optionally without
    ``+client|unblock`` or other grants."""
    rule = [f"~{{{prefix}[:}}]*" if part == "~{app[:}]*" else part for part in documented_rule()]
    dropped = set(without) | (set() if unblock else {"+client|unblock"})
    return [part for part in rule if part not in dropped]


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


@task(name="acl.limited", rate_limit="100/s")
def limited(value: int) -> int:
    return value


def test_the_documented_rule_grants_what_rate_limits_use(server: Server) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", *acl_rule(prefix))
    client = Client(user_url(server, "app"), prefix=prefix)
    try:
        client.set_limit("default", Limit(rate=50, per=1))
        with running_worker(client, [limited], **FAST):
            handles = [client.enqueue(limited, i) for i in range(5)]
            assert [h.result(timeout=10) for h in handles] == list(range(5))
    finally:
        client.close()


def test_a_worker_whose_user_lacks_a_command_the_scripts_use_refuses_to_start(server: Server) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", *acl_rule(prefix, without=("+pexpire",)))
    client = Client(user_url(server, "app"), prefix=prefix)
    try:
        worker = Worker.create(Registry([echo]), client.settings.replace(**FAST), entry_points=False)
        with pytest.raises(ConfigurationError, match="PEXPIRE"):
            RunningWorker(worker).start()
    finally:
        client.close()


def test_a_lease_refused_part_way_by_the_acl_loses_no_job(server: Server) -> None:
    """An admin sets a rate limit; the worker's user may not PEXPIRE (granted later). Every lease is refused,
    and each job stays waiting until the grant, then runs once."""
    prefix = f"a{uuid.uuid4().hex[:8]}"
    admin_client = Client(server.url, prefix=prefix)
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", *acl_rule(prefix, without=("+pexpire",)))
        admin_client.set_limit("default", Limit(rate=10, per=1))
        client = Client(user_url(server, "app"), prefix=prefix)
        try:
            handles = [client.enqueue(echo, i) for i in range(3)]
            keys = client.keys("default")
            result = scripts.call(client.redis, "step", keys.all, scripts.step_args(client.settings, "w", 3, []))
            assert "can't run this command" in (scripts.step_lease_refused(result) or "")
            assert scripts.parse_step(result)[1] == []  # nothing leased
            assert [h.status().state for h in handles] == [JobState.WAITING] * 3
            assert client.counts()["waiting"] == 3 and client.counts()["active"] == 0
            admin.execute_command("ACL", "SETUSER", "app", "+pexpire")
            with running_worker(client, [echo], **FAST):
                assert [h.result(timeout=10) for h in handles] == [0, 1, 2]
            assert [h.status().attempts for h in handles] == [1, 1, 1]
        finally:
            client.close()
            admin_client.close()


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
            waiting = lambda: running.worker._inflight.lease_pending and running.worker._store.waiter_id is not None  # noqa: E731
            wait_until(waiting, timeout=5, interval=0.001, message="worker waiting")
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 4
        assert "cannot end the wake-up wait early" in caplog.text
    finally:
        client.close()


def test_the_start_up_check_covers_every_command_the_scripts_call() -> None:
    """access.lua's COMMANDS names each command a script calls (TIME, which every script calls first, aside:
    a user without it gets a permission error from the check itself)."""
    lua = Path(__file__).resolve().parent.parent / "taskmesh" / "store" / "lua"
    called: set[str] = set()
    for path in lua.glob("*.lua"):
        if path.name != "access.lua":
            called |= set(re.findall(r"(?:redis\.p?call|bulk)\('([A-Z]+)'", path.read_text()))
    block = re.search(r"local COMMANDS = \{(.*?)\n\}", (lua / "access.lua").read_text(), re.S)
    assert block
    checked = set(re.findall(r"\b([A-Z]+) = \{", block.group(1)))
    assert called - {"TIME"} == checked
