"""Start-up checks of the Redis server a worker is about to use."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, cast

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster

from ..errors import ConfigurationError
from ..store import connect, scripts
from ..store.keys import QueueKeys

log = logging.getLogger("taskmesh.worker")

MIN_VERSION = (6, 2)


async def check_server(conn: aredis.Redis) -> str:
    """Refuse servers that could lose jobs or lack what the scripts use; return the persistence mode.

    Too old a version, or a ``maxmemory-policy`` that evicts keys (it would silently drop jobs),
    is a :class:`ConfigurationError`. Where ``CONFIG`` is forbidden (managed Redis, ACL users)
    the policy cannot be read: that is a warning, not an error. On a cluster every master is checked.
    """
    if not connect.is_cluster(conn):
        return await _check(conn.info, conn.config_get)
    cluster = cast(acluster.RedisCluster, conn)
    await cluster.initialize()
    modes = [
        await _check(partial(cluster.info, target_nodes=node), partial(cluster.config_get, target_nodes=node))
        for node in cluster.get_primaries()
    ]
    return ", ".join(sorted(set(modes)))


async def _check(info_of: Callable[[str], Awaitable[Any]], config_get: Callable[[str], Awaitable[Any]]) -> str:
    info = await info_of("server")
    version = str(info.get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
        raise ConfigurationError(f"Redis {version} is too old: taskmesh needs {'.'.join(map(str, MIN_VERSION))}+")
    try:
        config = dict(await config_get("maxmemory-policy"))
        for name in ("appendonly", "appendfsync", "save"):
            config.update(await config_get(name))
    except redis.exceptions.ResponseError as exc:
        log.warning("cannot read the server's configuration (%s); make sure maxmemory-policy is noeviction", exc)
        return "unknown"
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        raise ConfigurationError(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure it would delete jobs. "
            "Set it to noeviction (CONFIG SET maxmemory-policy noeviction, or in redis.conf)"
        )
    if config.get("appendonly") == "yes":
        return f"AOF {config.get('appendfsync', 'everysec')}"
    return "RDB snapshots" if config.get("save") else "none (a restart loses every job)"


async def check_access(conn: aredis.Redis, queues: Iterable[QueueKeys], maxlen: int) -> None:
    """Refuse a Redis user that may not run a command taskmesh's scripts use on a queue's keys (an ACL that
    withholds one would fail scripts half-way). Redis before 7.0 cannot tell: then this only logs."""
    for keys in queues:
        try:
            denied = await scripts.acall(conn, "access", keys.all, [maxlen])
        except redis.exceptions.NoPermissionError as exc:
            message = f"the Redis user may not run taskmesh's scripts on queue {keys.queue!r}: {exc}"
            raise ConfigurationError(message) from None
        if denied is None:
            log.info("cannot check the Redis user's permissions (Redis before 7.0); see the ACL in the docs")
            return
        if denied:
            raise ConfigurationError(
                f"the Redis user may not run {', '.join(map(str, denied))} (queue {keys.queue!r}), which taskmesh's "
                "scripts use: grant them (see the ACL in the docs), or a script would fail half-way"
            )
