"""Start-up checks of the Redis server a worker is about to use."""

from __future__ import annotations

import logging

import redis
import redis.asyncio as aredis

from ..errors import ConfigurationError

log = logging.getLogger("taskmesh.worker")

MIN_VERSION = (6, 2)


async def check_server(conn: aredis.Redis) -> str:
    """Refuse servers that could lose jobs or lack what the scripts use; return the persistence mode.

    Too old a version, or a ``maxmemory-policy`` that evicts keys (it would silently drop jobs),
    is a :class:`ConfigurationError`. Where ``CONFIG`` is forbidden (managed Redis, ACL users)
    the policy cannot be read: that is a warning, not an error.
    """
    info = await conn.info("server")
    version = str(info.get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
        raise ConfigurationError(f"Redis {version} is too old: taskmesh needs {'.'.join(map(str, MIN_VERSION))}+")
    try:
        config = await conn.config_get("maxmemory-policy")
        config.update(await conn.config_get("appendonly"))
        config.update(await conn.config_get("appendfsync"))
        config.update(await conn.config_get("save"))
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
