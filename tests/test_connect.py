"""Connecting to Redis: URL forms, failing fast on a dead or frozen server, and the worker's watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import Server

from taskmesh import Client, RedisUnavailable, task
from taskmesh.embedded import free_port
from taskmesh.store import connect
from taskmesh.testing import running_worker, wait_until

FAST = {"lease_seconds": 1.0, "renew_interval": 0.3, "sweep_interval": 0.2, "idle_timeout": 1.0}


@task(name="connect.echo")
def echo(value: int) -> int:
    return value


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path / "redis", "--unixsocket", str(tmp_path / "redis.sock")) as redis_server:
        yield redis_server


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` (``name=value&...``) added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}{query}"


# -- URL forms -----------------------------------------------------------------


def test_url_forms_name_a_server_a_sentinel_service_or_a_cluster() -> None:
    server = connect.parse("rediss://app:s3cret@cache.internal:6380/2?ssl_ca_certs=/etc/ca.pem&socket_timeout=1.5")
    assert (server.kind, server.options["db"], server.options["username"], server.options["password"]) == (
        "server",
        2,
        "app",
        "s3cret",
    )
    assert (server.options["ssl_ca_certs"], server.socket_timeout) == ("/etc/ca.pem", 1.5)

    sentinel = connect.parse("redis+sentinel://app:pw@s1:26380,s2,[::1]:26381/jobs/3?sentinel_password=spw")
    assert (sentinel.kind, sentinel.service, sentinel.options["db"]) == ("sentinel", "jobs", 3)
    assert sentinel.nodes == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (sentinel.options["password"], sentinel.sentinel_options) == ("pw", {"password": "spw"})

    cluster = connect.parse("rediss+cluster://n1:7000,n2:7001")
    assert (cluster.kind, cluster.nodes, cluster.options["ssl"]) == ("cluster", (("n1", 7000), ("n2", 7001)), True)
    assert connect.parse("unix:///run/redis.sock?db=1").options == {"path": "/run/redis.sock", "db": 1}


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:6379",
        "redis+sentinel://localhost:26379",  # no service name
        "redis+cluster://localhost:7000/1",  # a cluster has only database 0
        "redis+sentinel://localhost:port/mymaster",
    ],
)
def test_a_malformed_url_is_a_value_error_that_says_why(url: str) -> None:
    with pytest.raises(ValueError, match=r"Redis URL|database 0|service name"):
        connect.parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "unix://app:pa/ssWORD9@/tmp/x.sock",
        "unix://:pa/ssWORD9@/tmp/x.sock",
        "unix://app:pa#ssWORD9@/tmp/x.sock",
        "UNIX://app:pa?ssWORD9@/tmp/x.sock",
    ],
)
def test_a_unix_url_whose_password_holds_a_slash_question_mark_or_hash_is_refused_unshown(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encode") as refused:
        connect.parse(url)
    assert "ssWORD9" not in str(refused.value)


def test_a_unix_url_takes_an_encoded_password_and_a_socket_path_holding_an_at() -> None:
    encoded = connect.parse("unix://app:pa%2Fss%23WORD9@/tmp/x.sock").options
    assert encoded == {"username": "app", "password": "pa/ss#WORD9", "path": "/tmp/x.sock"}
    assert connect.parse("unix:///run/user@1000/redis.sock").options == {"path": "/run/user@1000/redis.sock"}


def test_passwords_are_masked_in_what_taskmesh_prints() -> None:
    assert connect.redact("redis://app:s3cret@h:1/0") == "redis://app:***@h:1/0"
    assert connect.redact("redis+sentinel://:pw@a:1,b:2/m?sentinel_password=x&db=1") == (
        "redis+sentinel://:***@a:1,b:2/m?sentinel_password=***&db=1"
    )
    assert connect.redact("redis://h:1/0") == "redis://h:1/0"


def test_a_unix_socket_url_runs_jobs(server: Server, tmp_path: Path) -> None:
    client = Client(f"unix://{tmp_path / 'redis.sock'}?db=0", prefix=prefix())
    try:
        with running_worker(client, [echo], **FAST):
            assert client.enqueue(echo, 5).result(timeout=10) == 5
    finally:
        client.close()


# -- failing fast ----------------------------------------------------------------


def test_enqueue_to_a_stopped_server_raises_redis_unavailable_at_once() -> None:
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    client = Client(url, prefix=prefix())
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match=r"cannot reach Redis at redis://app:\*\*\*@127\.0\.0\.1"):
        client.enqueue(echo, 1)
    with pytest.raises(RedisUnavailable):
        asyncio.run(client.aenqueue(echo, 1))
    assert time.monotonic() - started < 2


def test_enqueue_to_a_frozen_server_raises_redis_unavailable_within_the_socket_timeout(server: Server) -> None:
    """SIGSTOP: connections stay open and nothing answers. The default 5 s socket timeout bounds each call."""
    client = Client(server.url, prefix=prefix())
    client.enqueue(echo, 1)  # a pooled connection, open before the freeze
    outcome: dict[str, object] = {}

    def sync_enqueue() -> None:
        try:
            client.enqueue(echo, 2)
        except RedisUnavailable as exc:
            outcome["sync"] = exc

    async def async_enqueue() -> None:
        try:
            await client.aenqueue(echo, 3)
        except RedisUnavailable as exc:
            outcome["async"] = exc
        finally:
            await client.aclose()

    server.pause()
    try:
        started = time.monotonic()
        thread = threading.Thread(target=sync_enqueue)
        thread.start()
        asyncio.run(asyncio.wait_for(async_enqueue(), 20))
        thread.join(20)
        took = time.monotonic() - started
    finally:
        server.resume()
        client.close()
    assert set(outcome) == {"sync", "async"}
    assert "Timeout" in str(outcome["sync"])
    assert connect.SOCKET_TIMEOUT - 0.5 < took < connect.SOCKET_TIMEOUT + 3


# -- the worker's watchdog ---------------------------------------------------------


def test_worker_notices_a_frozen_server_and_resumes_leasing_after_it_thaws(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker connection has a socket timeout; the blocking one's exceeds its longest wait.

    Without them an idle worker would wait on a dead connection forever.
    """
    caplog.set_level(logging.WARNING, logger="taskmesh")
    name = prefix()
    client = Client(server.url, prefix=name)  # the producer keeps the default timeouts
    # The worker's 1 s socket timeout (2 s for its wake-up wait) shortens the test.
    worker_client = Client(server.url + "?socket_timeout=1", prefix=name)
    try:
        with running_worker(worker_client, [echo], **FAST) as running:
            assert client.enqueue(echo, 1).result(timeout=10) == 1
            server.pause()
            try:
                wait_until(lambda: "wake-up listener" in caplog.text, timeout=10, message="listener timed out")
                wait_until(lambda: "redis unreachable" in caplog.text, timeout=10, message="worker retrying")
            finally:
                server.resume()
            thawed = time.monotonic()
            assert client.enqueue(echo, 2).result(timeout=10) == 2
            assert time.monotonic() - thawed < 8
            assert running.stats is None and running.error is None  # still running
    finally:
        client.close()
        worker_client.close()


# -- the client's direct script calls ------------------------------------------------


def test_script_calls_reconnect_once_after_the_server_drops_the_connection(server: Server) -> None:
    client = Client(server.url, prefix=prefix())
    try:
        first = client.enqueue(echo, 1)
        own_id = client.direct.execute_command("CLIENT", "ID")
        assert client.redis.client_kill_filter(_id=own_id) == 1
        second = client.enqueue(echo, 2)  # the idle connection is dead: one reconnect, and it goes through
        assert second.created and client.counts()["waiting"] == 2
        assert {first.status().state, second.status().state} == {"waiting"}
    finally:
        client.close()


def test_script_calls_load_the_scripts_again_after_a_script_flush(server: Server) -> None:
    client = Client(server.url, prefix=prefix())
    try:
        client.enqueue(echo, 1)
        client.redis.script_flush()
        assert client.enqueue(echo, 2).created
        assert client.counts()["waiting"] == 2
    finally:
        client.close()


def test_a_script_call_that_times_out_leaves_no_stale_reply_for_the_next_call(taskmesh_redis_url: str) -> None:
    """The reply to a call that timed out may still arrive: its connection is dropped, not reused."""
    client = Client(with_query(taskmesh_redis_url, "socket_timeout=0.3"), prefix=prefix())
    try:
        client.enqueue(echo, 0)  # scripts loaded, a connection open
        with pytest.raises(redis.exceptions.TimeoutError):
            client.direct.execute_command("BLPOP", f"{{{prefix()}}}:none", 1)
        assert client.direct.execute_command("ECHO", "next") == "next"
    finally:
        client.close()


def test_script_calls_from_many_threads_use_one_connection_per_concurrent_call(taskmesh_redis_url: str) -> None:
    client = Client(taskmesh_redis_url, prefix=prefix())
    threads, per_thread = 8, 200
    ids: list[str] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            ids.extend(client.enqueue(echo, i).id for i in range(per_thread))
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=produce) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
        assert not errors
        assert len(set(ids)) == threads * per_thread == client.counts()["waiting"]
        direct = client.direct
        assert isinstance(direct, connect.Direct) and 1 <= len(direct._idle) <= threads
    finally:
        client.close()


def test_a_forked_child_makes_its_own_connections(taskmesh_redis_url: str) -> None:
    client = Client(taskmesh_redis_url, prefix=prefix())
    try:
        client.enqueue(echo, 1)  # the parent holds an open connection
        pid = os.fork()
        if pid == 0:  # the child: a job of its own, on a socket of its own
            code = 0
            try:
                client.enqueue(echo, 2)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.enqueue(echo, 3).created  # the parent's connection was not disturbed
        assert client.counts()["waiting"] == 3
    finally:
        client.close()


def test_script_calls_keep_to_max_connections(taskmesh_redis_url: str) -> None:
    client = Client(with_query(taskmesh_redis_url, "max_connections=1"), prefix=prefix())
    key = f"{{{client.settings.prefix}}}:held"
    try:
        client.enqueue(echo, 1)
        holder = threading.Thread(target=client.direct.execute_command, args=("BLPOP", key, 10))
        holder.start()
        wait_until(lambda: any(c.get("cmd") == "blpop" for c in client.redis.client_list()), timeout=5)
        with pytest.raises(RedisUnavailable, match="Too many connections"):
            client.enqueue(echo, 2)
        client.redis.lpush(key, "go")
        holder.join(10)
        assert client.enqueue(echo, 3).created
        assert client.counts()["waiting"] == 2
    finally:
        client.close()


@pytest.mark.parametrize(("options", "calls"), [("", 1), ("&retry_on_timeout=true", 2)])
def test_script_calls_follow_the_urls_retry_policy(server: Server, options: str, calls: int) -> None:
    client = Client(f"{server.url}?socket_timeout=0.3{options}", prefix=prefix())
    try:
        client.redis.config_resetstat()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.direct.execute_command("BLPOP", f"{{{client.settings.prefix}}}:none", 1)
        assert client.redis.info("commandstats")["cmdstat_blpop"]["calls"] == calls
    finally:
        client.close()


def test_a_dropped_client_closes_its_script_connections(taskmesh_redis_url: str) -> None:
    name = f"drop{uuid.uuid4().hex[:8]}"
    client = Client(with_query(taskmesh_redis_url, f"client_name={name}"), prefix=prefix())
    admin = connect.sync_client(taskmesh_redis_url)
    try:
        client.enqueue(echo, 1)
        assert any(c.get("name") == name for c in admin.client_list())
        del client  # no close(): the connections go with the client
        assert not any(c.get("name") == name for c in admin.client_list())
    finally:
        admin.close()


# -- the asyncio twin --------------------------------------------------------------


def test_async_script_calls_cancelled_mid_reply_leave_no_stale_reply(taskmesh_redis_url: str) -> None:
    """A call cancelled while Redis works on it (as `asyncio.wait_for` does) closes its connection."""
    client = Client(taskmesh_redis_url, prefix=prefix())
    key = f"{{{client.settings.prefix}}}:none"

    async def scenario() -> None:
        await client.aenqueue(echo, 1)
        direct = client.adirect
        waiting = asyncio.ensure_future(direct.execute_command("BLPOP", key, 5))
        admin = connect.async_client(taskmesh_redis_url)
        try:
            for _ in range(500):  # bounded: 5 s
                if any(c.get("cmd") == "blpop" for c in await admin.client_list()):
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await admin.lpush(key, "late")  # had the cancelled BLPOP's connection been kept, this would be its reply
            assert await direct.execute_command("ECHO", "next") == "next"
            assert await admin.llen(key) == 1
        finally:
            await admin.aclose()
            await client.aclose()

    asyncio.run(scenario())


def test_async_script_calls_reconnect_after_the_server_drops_the_connection(server: Server) -> None:
    client = Client(server.url, prefix=prefix())

    async def scenario() -> None:
        try:
            await client.aenqueue(echo, 1)
            own_id = await client.adirect.execute_command("CLIENT", "ID")
            assert await client.aredis.client_kill_filter(_id=own_id) == 1
            assert (await client.aenqueue(echo, 2)).created
            assert (await client.acounts())["waiting"] == 2
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_async_script_calls_keep_to_max_connections_and_follow_the_retry_policy(server: Server) -> None:
    client = Client(f"{server.url}?max_connections=1&socket_timeout=0.5&retry_on_timeout=true", prefix=prefix())
    key = f"{{{client.settings.prefix}}}:none"

    async def scenario() -> None:
        try:
            await client.aenqueue(echo, 1)
            await client.aredis.config_resetstat()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.adirect.execute_command("BLPOP", key, 1)
            assert (await client.aredis.info("commandstats"))["cmdstat_blpop"]["calls"] == 2
            holder = asyncio.ensure_future(client.adirect.execute_command("BLPOP", key, 0.1))
            await asyncio.sleep(0)  # the holder takes the one connection
            with pytest.raises(RedisUnavailable, match="Too many connections"):
                await client.aenqueue(echo, 2)
            assert await holder is None
            assert (await client.aenqueue(echo, 3)).created
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_script_call_with_an_unsendable_argument_is_a_data_error_and_takes_no_connection(
    taskmesh_redis_url: str,
) -> None:
    client = Client(with_query(taskmesh_redis_url, "max_connections=1"), prefix=prefix())
    try:
        client.enqueue(echo, 1)
        for _ in range(2):  # a connection taken and lost would leave none for the next call
            with pytest.raises(redis.exceptions.DataError):
                client.direct.execute_command("ECHO", object())
        assert client.direct.execute_command("ECHO", "fine") == "fine"
    finally:
        client.close()
