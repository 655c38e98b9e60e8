"""Every Redis connection taskmesh makes starts here, from one URL.

URL forms (see README, "Connecting to Redis"):

- ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path/to/socket[?db=N]``
- ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]``: the master of
  ``service`` as the Sentinels name it, looked up again on every new connection (so after a failover).
- ``redis+cluster://[user:password@]host[:port][,host[:port]...]`` (``rediss+cluster://`` with TLS):
  a Redis Cluster, found from any of the seed nodes.

Query parameters are redis-py's (``socket_timeout``, ``socket_connect_timeout``, ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``, ``max_connections`` ...),
plus ``sentinel_username`` / ``sentinel_password`` for Sentinels that require their own login.

Defaults fit a job queue that must fail fast rather than hang: a 2 s connect timeout, a 5 s socket
timeout, TCP keepalive, and one immediate reconnect on a broken connection (never a second wait on
a timeout). Values in the URL win over these defaults.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial, wraps
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import hiredis
import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.connection as aconnection
import redis.asyncio.retry as aretry
import redis.asyncio.sentinel as asentinel
import redis.cluster as cluster
import redis.connection as connection
import redis.retry as retry
import redis.sentinel as sentinel
from redis.backoff import NoBackoff

from ..errors import RedisFull, RedisUnavailable
from ..settings import Settings
from ..urls import check_userinfo, redact

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
SENTINEL_PORT = 26379
REDIS_PORT = 6379
#: A connection that failed or timed out (what the CLI reports as "cannot reach Redis").
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: Errors that mean "Redis cannot be reached or cannot serve now", as opposed to a refused command.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes authentication failures, loading, no master found
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,  # a cluster client reaches none of its nodes, or no node owns a slot
    redis.exceptions.ReadOnlyError,  # the URL names a replica (or a demoted master)
    OSError,
)
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
# redis-py leaves these untyped; typed here once.
_parse_url: Callable[[str], Mapping[str, Any]] = connection.parse_url
_aparse_url: Callable[[str], Mapping[str, Any]] = aconnection.parse_url
_ClusterNode: Callable[[str, int], Any] = cluster.ClusterNode
_Sentinel: Callable[..., Any] = sentinel.Sentinel
_ASentinel: Callable[..., Any] = asentinel.Sentinel


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL names: one ``server``, a ``sentinel``-managed master, or a ``cluster``."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # the Sentinels, or the cluster's seed nodes
    service: str = ""  # the Sentinel master name
    options: dict[str, Any] = field(default_factory=dict)  # connection options (auth, db, timeouts, TLS)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_timeout(self) -> float:
        value = self.options.get("socket_timeout", SOCKET_TIMEOUT)
        return SOCKET_TIMEOUT if value is None else float(value)


def parse(url: str) -> Target:
    """Read a taskmesh Redis URL; raises ValueError for an unknown form."""
    check_userinfo(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        options = dict(_parse_url(url))
        options.pop("connection_class", None)
        return Target("server", url, options=options)
    base, _, mode = scheme.partition("+")
    if base not in ("redis", "rediss") or mode not in ("sentinel", "cluster"):
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    if scheme == "rediss+sentinel":
        raise ValueError("TLS to Sentinel-managed servers is not supported yet: use redis+sentinel://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    default_port = SENTINEL_PORT if mode == "sentinel" else REDIS_PORT
    nodes = tuple(_host_port(part, default_port) for part in hosts.split(","))
    # Credentials and query options go through redis-py's own URL parser, for its exact semantics.
    netloc = f"{userinfo}@localhost" if userinfo else "localhost"
    options = dict(_parse_url(urlunsplit((base, netloc, "", parts.query, ""))))
    for name in ("connection_class", "host", "port"):
        options.pop(name, None)
    if base == "rediss":
        options["ssl"] = True
    sentinel_options = {name[len("sentinel_") :]: options.pop(name) for name in _SENTINEL_OPTIONS if name in options}
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if mode == "cluster":
        if segments not in ([], ["0"]) or options.get("db"):
            raise ValueError("a Redis Cluster has only database 0: drop the path from the redis+cluster:// URL")
        options.pop("db", None)
        return Target("cluster", url, nodes, options=options)
    if not segments or len(segments) > 2:
        raise ValueError("a redis+sentinel:// URL needs the master's service name: redis+sentinel://host:port/mymaster")
    if len(segments) == 2:
        options["db"] = _int(segments[1], "database number")
    return Target("sentinel", url, nodes, segments[0], options, sentinel_options)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise ValueError("a Redis URL lists an empty host")
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        return host, _int(rest[1:], "port") if rest.startswith(":") else default_port
    host, colon, port = text.rpartition(":")
    return (host, _int(port, "port")) if colon else (text, default_port)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r} in a Redis URL") from None


def _defaults(target: Target) -> dict[str, Any]:
    defaults: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT}
    if not target.url.lower().startswith("unix:"):
        defaults["socket_keepalive"] = True
    return defaults


def _options(target: Target, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Connection options: taskmesh defaults < the URL < the caller's ``overrides``. Replies are decoded as
    UTF-8 with bad bytes replaced: what another hand wrote into Redis cannot break a read."""
    options = {**_defaults(target), "encoding_errors": "replace", **target.options, "decode_responses": True}
    return {**options, **overrides}


def _sentinel_options(target: Target, options: Mapping[str, Any]) -> dict[str, Any]:
    shared = {k: v for k, v in options.items() if k.startswith("socket_") or k == "retry"}
    return {**shared, **target.sentinel_options}


# -- sync ------------------------------------------------------------------------


def wait_ready(conn: redis.Redis, process: subprocess.Popen[bytes], timeout: float) -> str:
    """PING a starting server until it answers: ``"ready"``, ``"exited"`` (its process ended) or ``"timeout"``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.ping()
            return "ready"
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.ConnectionError:
            if process.poll() is not None:
                return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.02)


def wait_ready_on(port: int, process: subprocess.Popen[bytes], timeout: float) -> str:
    """:func:`wait_ready` for a server starting on ``port`` of 127.0.0.1, on a connection of its own."""
    conn = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        return wait_ready(conn, process, timeout)
    finally:
        conn.close()


def sync_client(url: str, **overrides: Any) -> redis.Redis:
    """A client for ``url`` (``decode_responses`` on). A cluster client is typed as ``redis.Redis``:
    it answers the same commands, and taskmesh sends it only commands that fit a cluster."""
    target = parse(url)
    options = _options(target, {"retry": retry.Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)), **overrides})
    if target.kind == "cluster":
        nodes = [_ClusterNode(host, port) for host, port in target.nodes]
        return cast(redis.Redis, cluster.RedisCluster(startup_nodes=nodes, **options))
    if target.kind == "sentinel":
        manager = _Sentinel(target.nodes, sentinel_kwargs=_sentinel_options(target, options))
        return cast(redis.Redis, manager.master_for(target.service, **options))
    pool_options = {**dict(_parse_url(url)), **options}
    return redis.Redis.from_pool(redis.ConnectionPool(**pool_options))


class Direct:
    """Single commands on connections of its own, past redis-py's per-command layers.

    redis-py 8 wraps every command in observability hooks, a pool check-out that polls the socket,
    a retry closure and response-callback lookups: about 20 µs per call on this project's 2-core
    machine, as much as Redis spends running an enqueue script. The sync client sends its scripts
    (enqueue above all) through here.

    The connections are made from ``client``'s pool settings (TLS, AUTH, the database, a Sentinel's
    master lookup, the retry policy) and capped at its ``max_connections``, counted apart from the
    pool. Errors are redis-py's. A failed call is retried as the client's retry policy says (by
    default once, at once, after a broken connection), each time on a new connection; only a
    connection whose reply was read in full goes back to the idle list. Thread-safe (one connection
    per concurrent call) and fork-safe (a child never uses the parent's sockets). Not for a cluster
    client, which routes each command itself.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._new: Callable[[], Any] = partial(pool.connection_class, **pool.connection_kwargs)
        self._limit: int = pool.max_connections
        self._idle: list[Any] = []
        self._made = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        weakref.finalize(self, _disconnect_all, self._idle)

    def execute_command(self, *command: Any) -> Any:
        if self._pid != os.getpid():  # a forked child: the parent's sockets and lock are not ours
            self._idle.clear()
            self._made, self._lock, self._pid = 0, threading.Lock(), os.getpid()
        packed = _pack(command)
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connection()
        try:
            conn.send_packed_command(packed)
            reply = conn.read_response()
        except redis.exceptions.ResponseError:
            self._idle.append(conn)  # the server answered, with an error: the connection is in step
            raise
        except BaseException as error:
            self._drop(conn)  # a reply may still be on its way: this connection is out of step
            if not isinstance(error, Exception):
                raise
            conn, reply = self._retry(conn.retry, packed, error)
        self._idle.append(conn)
        return reply

    def _retry(self, policy: Any, packed: list[bytes], error: Exception) -> tuple[Any, Any]:
        """Run ``policy`` (a redis-py Retry) as if its first attempt had failed with ``error``."""
        first, held = [error], []

        def attempt() -> tuple[Any, Any]:
            if first:
                raise first.pop()
            conn = self._connection()
            held.append(conn)
            conn.send_packed_command(packed)
            return conn, conn.read_response()

        def failed(_: Exception) -> None:
            while held:
                self._drop(held.pop())

        try:
            result: tuple[Any, Any] = policy.call_with_retry(attempt, failed)
        except BaseException:
            failed(error)
            raise
        return result

    def _connection(self) -> Any:
        """A new connection, connected (a Sentinel's connection asks for the master here, not on send)."""
        with self._lock:
            if self._made >= self._limit:
                raise redis.exceptions.MaxConnectionsError("Too many connections")
            self._made += 1
        conn = self._new()
        try:
            conn.connect()
        except BaseException:
            self._drop(conn)
            raise
        return conn

    def _drop(self, conn: Any) -> None:
        conn.disconnect()
        with self._lock:
            self._made -= 1

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Any:
        return self.execute_command("SCRIPT", "LOAD", script)

    def close(self) -> None:
        """Close the idle connections (one in use closes when its call ends and the client is dropped)."""
        while True:
            try:
                conn = self._idle.pop()  # not `while self._idle`: another thread may take the last one
            except IndexError:
                return
            self._drop(conn)


def _pack(command: tuple[Any, ...]) -> list[bytes]:
    """``command`` in the Redis protocol, by hiredis: what redis-py's packer does, in a third of the time."""
    try:
        return [hiredis.pack_command(command)]
    except TypeError as exc:
        raise redis.exceptions.DataError(str(exc)) from None


def _disconnect_all(connections: list[Any]) -> None:
    while connections:
        connections.pop().disconnect()


def direct(client: redis.Redis) -> Direct | redis.Redis:
    """A :class:`Direct` for ``client``, or ``client`` itself where it is a cluster client."""
    return client if is_cluster(client) else Direct(client)


# -- async -----------------------------------------------------------------------


def async_client(url: str, **overrides: Any) -> aredis.Redis:
    """The asyncio twin of :func:`sync_client`."""
    target = parse(url)
    error_retry = aretry.Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,))
    options = _options(target, {"retry": error_retry, **overrides})
    if target.kind == "cluster":
        options.pop("redis_connect_func", None)  # cluster nodes make their own connections
        nodes = [acluster.ClusterNode(host, port) for host, port in target.nodes]
        return cast(aredis.Redis, acluster.RedisCluster(startup_nodes=nodes, **options))
    if target.kind == "sentinel":
        manager = _ASentinel(target.nodes, sentinel_kwargs=_sentinel_options(target, options))
        return cast(aredis.Redis, manager.master_for(target.service, **options))
    pool_options = {**dict(_aparse_url(url)), **options}
    return aredis.Redis.from_pool(aredis.ConnectionPool(**pool_options))


class AsyncDirect:
    """The asyncio twin of :class:`Direct`, for one event loop.

    Made from an asyncio client's pool settings; the same rules: capped at ``max_connections`` apart
    from the pool, the client's retry policy with each retry on a new connection, and a connection
    that did not read its reply in full (an error, a timeout, a cancelled call) is closed, never reused.
    """

    def __init__(self, client: aredis.Redis) -> None:
        pool = client.connection_pool
        self._new: Callable[[], Any] = partial(pool.connection_class, **pool.connection_kwargs)
        self._limit: int = pool.max_connections
        self._idle: list[Any] = []
        self._made = 0

    async def execute_command(self, *command: Any) -> Any:
        packed = _pack(command)
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = await self._connection()
        try:
            await conn.send_packed_command(packed)
            reply = await conn.read_response()
        except redis.exceptions.ResponseError:
            self._idle.append(conn)  # the server answered, with an error: the connection is in step
            raise
        except BaseException as error:
            await self._drop(conn)  # a reply may still be on its way: this connection is out of step
            if not isinstance(error, Exception):
                raise
            conn, reply = await self._retry(conn.retry, packed, error)
        self._idle.append(conn)
        return reply

    async def _retry(self, policy: Any, packed: list[bytes], error: Exception) -> tuple[Any, Any]:
        """Run ``policy`` (a redis-py asyncio Retry) as if its first attempt had failed with ``error``."""
        first, held = [error], []

        async def attempt() -> tuple[Any, Any]:
            if first:
                raise first.pop()
            conn = await self._connection()
            held.append(conn)
            await conn.send_packed_command(packed)
            return conn, await conn.read_response()

        async def failed(_: Exception) -> None:
            while held:
                await self._drop(held.pop())

        try:
            result: tuple[Any, Any] = await policy.call_with_retry(attempt, failed)
        except BaseException:
            await failed(error)
            raise
        return result

    async def _connection(self) -> Any:
        if self._made >= self._limit:
            raise redis.exceptions.MaxConnectionsError("Too many connections")
        self._made += 1
        conn = self._new()
        try:
            await conn.connect()
        except BaseException:
            await self._drop(conn)
            raise
        return conn

    async def _drop(self, conn: Any) -> None:
        self._made -= 1
        await conn.disconnect(nowait=True)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> Any:
        return await self.execute_command("SCRIPT", "LOAD", script)

    async def aclose(self) -> None:
        while self._idle:
            await self._drop(self._idle.pop())


def async_direct(client: aredis.Redis) -> AsyncDirect | aredis.Redis:
    """An :class:`AsyncDirect` for ``client``, or ``client`` itself where it is a cluster client."""
    return client if is_cluster(client) else AsyncDirect(client)


def blocking_client(
    url: str, block_seconds: float, on_connect: Callable[[Any], Any] | None = None, **overrides: Any
) -> aredis.Redis:
    """An asyncio client for blocking waits of up to ``block_seconds``.

    Its socket timeout is the wait plus the URL's socket timeout, so a wait on a dead connection
    (a frozen server, a dropped route) ends with a TimeoutError instead of hanging forever.
    ``on_connect(connection)`` replaces redis-py's connection handshake on every (re)connection
    (it must call ``connection.on_connect()``); it is not called on a cluster.
    """
    timeout = block_seconds + parse(url).socket_timeout
    if on_connect is not None:
        overrides["redis_connect_func"] = on_connect
    return async_client(url, socket_timeout=timeout, **overrides)


def is_cluster(conn: object) -> bool:
    return isinstance(conn, (cluster.RedisCluster, acluster.RedisCluster))


async def blpop(conn: aredis.Redis, keys: list[str], timeout: float) -> Any:
    """BLPOP on ``keys``. On a cluster, where keys of different slots cannot share one command,
    one BLPOP per key runs at once and the first answer wins; the others are cancelled (their
    connections are closed, and a token one of them popped in that instant is lost: it only
    meant "look again", which the caller does anyway)."""
    if len(keys) == 1 or not is_cluster(conn):
        return await conn.blpop(keys, timeout=timeout)
    waits = [asyncio.ensure_future(conn.blpop([key], timeout=timeout)) for key in keys]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all(waits, pause=0.01)
    popped = [wait.result() for wait in done]  # raises the first error, if any
    for extra in [p for p in popped if p][1:]:  # two arrived together: hand the others back
        await conn.lpush(extra[0], extra[1])
    return next((p for p in popped if p), None)


async def cancel_all(tasks: Sequence[asyncio.Future[Any]], pause: float, rounds: int = 100) -> None:
    """Cancel until cancelled (for at most ``rounds`` pauses): on Python 3.11 a cancel that lands as
    redis-py's send (an ``asyncio.wait_for``) completes is swallowed, and the call would go on to its
    timeout (a BLPOP, a blocking XREADGROUP)."""
    for _ in range(rounds):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=pause)


def xread(conn: redis.Redis, streams: dict[Any, Any], count: int, block: int | None) -> Any:
    """XREAD over ``streams``. On a cluster each stream is read on its own (streams of different
    queues live in different slots): first a look at each, then a block shared out between them."""
    if len(streams) < 2 or not is_cluster(conn):
        return conn.xread(streams, count=count, block=block)
    found: list[Any] = []
    for stream, since in streams.items():
        part: Any = conn.xread({stream: since}, count=count)
        found += part or []
    if found or block is None:
        return found
    share = max(1, block // len(streams))
    for stream, since in streams.items():
        part = conn.xread({stream: since}, count=count, block=share)
        found = part or []
        if found:
            return found
    return found


async def axread(conn: aredis.Redis, streams: dict[Any, Any], count: int, block: int | None) -> Any:
    """The asyncio twin of :func:`xread`."""
    if len(streams) < 2 or not is_cluster(conn):
        return await conn.xread(streams, count=count, block=block)
    found: list[Any] = []
    for stream, since in streams.items():
        part: Any = await conn.xread({stream: since}, count=count)
        found += part or []
    if found or block is None:
        return found
    share = max(1, block // len(streams))
    for stream, since in streams.items():
        part = await conn.xread({stream: since}, count=count, block=share)
        found = part or []
        if found:
            return found
    return found


# -- errors ----------------------------------------------------------------------


def unavailable(url: str, exc: BaseException) -> RedisUnavailable:
    """The error taskmesh raises when Redis at ``url`` cannot be reached (or serve) now."""
    reason = (str(exc) or type(exc).__name__).split(" : <", 1)[0]  # not the client reprs a Sentinel error lists
    return RedisUnavailable(f"cannot reach Redis at {redact(url)}: {reason}")


def full(url: str, exc: BaseException) -> RedisFull:
    """The error taskmesh raises when Redis at ``url`` refuses a write for want of memory."""
    return RedisFull(
        f"Redis at {redact(url)} is out of memory (maxmemory reached) and refused the write; nothing was written. "
        "Free memory (keep fewer finished jobs), raise maxmemory or try again later"
    )


#: What the guards turn into taskmesh errors: Redis out of reach, and Redis out of memory.
GUARDED_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.OutOfMemoryError, *UNAVAILABLE_ERRORS)


def translated(url: str, exc: BaseException) -> RedisUnavailable:
    """The taskmesh error for one of ``GUARDED_ERRORS`` met at ``url``."""
    return full(url, exc) if isinstance(exc, redis.exceptions.OutOfMemoryError) else unavailable(url, exc)


class _Connected(Protocol):
    @property
    def settings(self) -> Settings: ...


S = TypeVar("S", bound=_Connected)
P = ParamSpec("P")
R = TypeVar("R")


def guard(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Make ``method`` raise :class:`RedisUnavailable` (naming ``self.settings.redis_url``) where Redis
    cannot be reached or does not answer, instead of a redis-py error."""

    @wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except GUARDED_ERRORS as exc:
            raise translated(self.settings.redis_url, exc) from exc

    return call


def aguard(method: Callable[Concatenate[S, P], Awaitable[R]]) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """:func:`guard` for a coroutine function."""

    @wraps(method)
    async def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except GUARDED_ERRORS as exc:
            raise translated(self.settings.redis_url, exc) from exc

    return call


def guard_iter(method: Callable[Concatenate[S, P], Iterator[R]]) -> Callable[Concatenate[S, P], Iterator[R]]:
    """:func:`guard` for a generator."""

    @wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        try:
            yield from method(self, *args, **kwargs)
        except GUARDED_ERRORS as exc:
            raise translated(self.settings.redis_url, exc) from exc

    return call


def aguard_iter(
    method: Callable[Concatenate[S, P], AsyncIterator[R]],
) -> Callable[Concatenate[S, P], AsyncIterator[R]]:
    """:func:`guard` for an async generator."""

    @wraps(method)
    async def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        try:
            async for item in method(self, *args, **kwargs):
                yield item
        except GUARDED_ERRORS as exc:
            raise translated(self.settings.redis_url, exc) from exc

    return call
