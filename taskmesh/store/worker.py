"""A worker's store: the async store plus what only a worker does (its heartbeat, the wake-up wait)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, cast

import redis
import redis.asyncio.cluster as acluster

from ..errors import ConfigurationError
from ..settings import Settings
from . import connect, scripts
from .aqueue import AsyncQueueStore
from .base import AsyncRedis, ResponseError, Stepped, Wakeup
from .keys import claim_key

#: What a worker waits out, retrying with backoff (``taskmesh/dispatch/retry.py``): a connection lost or timed
#: out, a socket error, a cluster failing over or out of reach. Not a refused command (``ResponseError``: a
#: replica's READONLY included, unlike ``connect.UNAVAILABLE_ERRORS``), which the worker reports and tries later.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    *connect.CONNECTION_ERRORS,
    OSError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,  # a cluster client reaches none of its nodes
)


class ServerConfig(NamedTuple):
    """What a worker checks of one server (each master of a cluster) before it starts: its version, and its
    ``maxmemory-policy``, ``appendonly``, ``appendfsync`` and ``save`` (None where ``CONFIG`` is refused: managed
    Redis, an ACL user; ``refused`` then says why)."""

    version: str
    config: dict[str, str] | None
    refused: str | None = None


class WorkerStore(AsyncQueueStore):
    """:class:`AsyncQueueStore` for a worker, whose script calls go on the redis-py client (measured as fast
    there as direct connections), with a second connection for the wake-up wait (``waiter``): its socket
    timeout exceeds the longest wait (``idle_timeout``), so a dead connection ends the wait."""

    def __init__(self, settings: Settings, *, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, options=options, direct=False)
        self._waiter: AsyncRedis | None = None
        #: The waiting connection's client id, for ``CLIENT UNBLOCK``: None before it connects, or where an
        #: ACL forbids ``CLIENT ID`` (a stopping worker then lets the wait time out).
        self.waiter_id: int | None = None

    @property
    def waiter(self) -> AsyncRedis:
        if self._waiter is None:
            url, block = self.settings.redis_url, self.settings.idle_timeout
            self._waiter = connect.blocking_client(url, block, self._on_waiter_connect, **self._options)
        return self._waiter

    @property
    def on_cluster(self) -> bool:
        return connect.is_cluster(self.waiter)

    async def _on_waiter_connect(self, conn: Any) -> None:
        """Every (re)connection of the waiter records its client id."""
        await conn.on_connect()
        await conn.send_command("CLIENT", "ID")
        try:
            self.waiter_id = int(await conn.read_response())
        except ResponseError:
            self.waiter_id = None

    async def aclose(self) -> None:
        await super().aclose()
        if self._waiter is not None:
            await self._waiter.aclose()
            self._waiter = None

    # -- start-up checks ------------------------------------------------------------

    async def server_configs(self) -> list[ServerConfig]:
        """What :class:`ServerConfig` says of the server, or of each master of a cluster."""
        conn = self.redis
        if not connect.is_cluster(conn):
            return [await self._server_config(conn.info, conn.config_get)]
        cluster = cast(acluster.RedisCluster, conn)
        await cluster.initialize()
        configs = []
        for node in cluster.get_primaries():
            info, config_get = partial(cluster.info, target_nodes=node), partial(cluster.config_get, target_nodes=node)
            configs.append(await self._server_config(info, config_get))
        return configs

    @staticmethod
    async def _server_config(
        info_of: Callable[[str], Awaitable[Any]], config_get: Callable[[str], Awaitable[Any]]
    ) -> ServerConfig:
        info = await info_of("server")
        version = str(info.get("redis_version", "0"))
        try:
            config: dict[str, str] = dict(await config_get("maxmemory-policy"))
            for name in ("appendonly", "appendfsync", "save"):
                config.update(await config_get(name))
        except ResponseError as exc:
            return ServerConfig(version, None, str(exc))
        return ServerConfig(version, config)

    async def access_denied(self, queue: str) -> list[str] | None:
        """:meth:`check_access`, for a worker about to start: a Redis user who may not run taskmesh's scripts on
        the queue's keys at all is a :class:`ConfigurationError` (say which, and what Redis answered)."""
        try:
            return await self.check_access(queue)
        except redis.exceptions.NoPermissionError as exc:
            message = f"the Redis user may not run taskmesh's scripts on queue {queue!r}: {exc}"
            raise ConfigurationError(message) from None

    # -- heartbeat ---------------------------------------------------------------

    async def register_worker(self, worker: str, queues: Sequence[str], ttl_ms: float) -> None:
        """Record ``worker`` as live for ``ttl_ms`` from now (by the Redis clock), and its queues as used."""
        seconds, micros = await self.redis.time()
        expires = seconds * 1000 + micros / 1000 + ttl_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._workers_key(), {worker: expires})
            pipe.sadd(self._queues_key(), *queues)
            await pipe.execute()
        self.known.update(queues)

    async def unregister_worker(self, worker: str) -> None:
        await self.redis.zrem(self._workers_key(), worker)

    # -- the wake-up wait ----------------------------------------------------------

    async def wait_for_wakeup(self, queues: Sequence[str], timeout: float) -> Wakeup | None:
        """Wait up to ``timeout`` seconds for a wake-up of one of ``queues``; the token taken, or None."""
        popped = await connect.blpop(self.waiter, [self.keys(queue).wakeup for queue in queues], timeout)
        return None if popped is None else Wakeup(str(popped[0]), str(popped[1]))

    async def pass_on(self, wakeup: Wakeup) -> None:
        """Give a wake-up this worker cannot act on back to its list, for another idle worker."""
        await self.waiter.lpush(wakeup.key, wakeup.token)

    async def wait_and_lease(self, queue: str, worker: str, timeout: float) -> Stepped | None:
        """Wait for a wake-up of ``queue`` with a one-job ``step`` queued behind the wait on the same
        connection: the wake-up is moved to ``worker``'s claim list and the step, run by Redis at once, leases
        a job only if it finds the claim. An idle worker's next job then costs no extra round trip, and
        :meth:`unblock_waiter` ends the wait so that nothing is leased. Not on a cluster, whose client cannot
        pin a wait and a step to one connection (see :meth:`wait_for_wakeup`).

        Returns the step's result; None if it did not run (its script was missing: loaded now). A wake-up
        taken by a step that failed is given back, never left in a stale claim.
        """
        keys = self.keys(queue)
        claim = claim_key(keys, worker)
        step_keys = (*keys.all, claim)
        pipe = self.waiter.pipeline(transaction=False)
        pipe.execute_command("BLMOVE", keys.wakeup, claim, "LEFT", "RIGHT", timeout)
        pipe.evalsha(scripts.sha("step"), len(step_keys), *step_keys, *scripts.step_args(self.settings, worker, 1, []))
        moved, result = await pipe.execute(raise_on_error=False)
        if isinstance(moved, Exception):
            raise moved
        if isinstance(result, Exception):
            if moved is not None:
                await self.waiter.lmove(claim, keys.wakeup, "LEFT", "LEFT")
            if not isinstance(result, redis.exceptions.NoScriptError):
                raise result
            await scripts.aload_all(self.waiter)
            return None
        return self._stepped(result)

    async def unblock_waiter(self) -> bool:
        """``CLIENT UNBLOCK`` the wake-up wait; False if it was not waiting (or its client id is unknown)."""
        if self.waiter_id is None:
            return False
        return bool(await self.redis.client_unblock(self.waiter_id))
