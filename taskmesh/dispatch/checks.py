"""Start-up checks of the Redis server a worker is about to use."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..errors import ConfigurationError
from ..store.worker import ServerConfig, WorkerStore

log = logging.getLogger("taskmesh.worker")

MIN_VERSION = (6, 2)


async def check_server(store: WorkerStore) -> str:
    """Refuse servers that could lose jobs or lack what the scripts use; return the persistence mode.

    Too old a version, or a ``maxmemory-policy`` that evicts keys (it would silently drop jobs),
    is a :class:`ConfigurationError`. Where ``CONFIG`` is forbidden (managed Redis, ACL users)
    the policy cannot be read: that is a warning, not an error. On a cluster every master is checked.
    """
    return ", ".join(sorted({persistence(server) for server in await store.server_configs()}))


def persistence(server: ServerConfig) -> str:
    """The persistence mode of a server a worker may use; a :class:`ConfigurationError` for one it may not."""
    version = server.version
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
        raise ConfigurationError(f"Redis {version} is too old: taskmesh needs {'.'.join(map(str, MIN_VERSION))}+")
    config = server.config
    if config is None:
        log.warning(
            "cannot read the server's configuration (%s); make sure maxmemory-policy is noeviction", server.refused
        )
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


async def check_access(store: WorkerStore, queues: Iterable[str]) -> None:
    """Refuse a Redis user that may not run a command taskmesh's scripts use on a queue's keys (an ACL that
    withholds one would fail scripts half-way). Redis before 7.0 cannot tell: then this only logs."""
    for queue in queues:
        denied = await store.access_denied(queue)
        if denied is None:
            log.info("cannot check the Redis user's permissions (Redis before 7.0); see the ACL in the docs")
            return
        if denied:
            raise ConfigurationError(
                f"the Redis user may not run {', '.join(denied)} (queue {queue!r}), which taskmesh's "
                "scripts use: grant them (see the ACL in the docs), or a script would fail half-way"
            )
