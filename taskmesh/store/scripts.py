"""The Lua scripts (one per transition) and how their arguments are packed.

Both the sync client and the async worker call scripts through these
helpers, so argument layout and result parsing exist once.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.resources import files
from typing import Any, NamedTuple

import redis
import redis.asyncio as aredis

from ..settings import Settings
from .connect import AsyncDirect, Direct

SCRIPT_NAMES = ("enqueue", "step", "renew", "sweep", "cancel", "control", "cron", "access")


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the shared prelude plus the script body.

    A script may have an early part, before a ``-- @lib`` line, that runs after only the head of the
    prelude (up to ``-- @end-of-head``): a fast path that returns there never builds the other helpers.
    """
    lua = files("taskmesh.store") / "lua"
    head, sep, rest = (lua / "lib.lua").read_text().partition("-- @end-of-head\n")
    assert sep, "lib.lua lost its -- @end-of-head line"
    early, sep, late = (lua / f"{name}.lua").read_text().partition("-- @lib\n")
    if not sep:
        early, late = "", early
    return "\n".join((head, early, rest, late))


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()


def call(conn: redis.Redis | Direct, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
    """Run script ``name`` by its SHA, loading it first if this Redis has not seen it."""
    try:
        return conn.evalsha(sha(name), len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        conn.script_load(source(name))
        return conn.evalsha(sha(name), len(keys), *keys, *args)


async def acall(conn: aredis.Redis | AsyncDirect, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
    try:
        return await conn.evalsha(sha(name), len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        await conn.script_load(source(name))
        return await conn.evalsha(sha(name), len(keys), *keys, *args)


def run_pipeline(conn: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``commands`` (EVALSHA calls among them) in one round trip; raises the first error.

    The calls that found their script missing (a new, restarted or failed-over server; on a cluster
    only some nodes may lack it) run again once the scripts are loaded; the others ran once.
    """
    return _raise_first(run_pipeline_each(conn, commands))


def run_pipeline_each(conn: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """:func:`run_pipeline` that returns each command's error in its place instead of raising the first:
    for calls about unrelated things (one per schedule, say), where one that fails must not stop the
    others. A connection lost still raises."""
    results = _pipeline(conn, commands)
    missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
    if missing:
        for name in SCRIPT_NAMES:
            conn.script_load(source(name))
        for i, result in zip(missing, _pipeline(conn, [commands[i] for i in missing]), strict=True):
            results[i] = result
    return results


def _pipeline(conn: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    pipe: Any = conn.pipeline(transaction=False)  # redis-py leaves Pipeline.execute_command untyped
    with pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))


def _raise_first(results: list[Any]) -> list[Any]:
    error = next((result for result in results if isinstance(result, Exception)), None)
    if error is not None:
        raise error
    return results


async def aload_all(conn: aredis.Redis) -> None:
    for name in SCRIPT_NAMES:
        await conn.script_load(source(name))


async def arun_pipeline(conn: aredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The asyncio twin of :func:`run_pipeline`."""
    return _raise_first(await arun_pipeline_each(conn, commands))


async def arun_pipeline_each(conn: aredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The asyncio twin of :func:`run_pipeline_each`."""
    results = await _apipeline(conn, commands)
    missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
    if missing:
        await aload_all(conn)
        for i, result in zip(missing, await _apipeline(conn, [commands[i] for i in missing]), strict=True):
            results[i] = result
    return results


async def _apipeline(conn: aredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    async with conn.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


def parse_enqueue(result: list[Any]) -> list[tuple[bool, str]]:
    """Per job: (created, state)."""
    return [(bool(int(result[i])), str(result[i + 1])) for i in range(0, len(result), 2)]


class Update(NamedTuple):
    """A fenced change to one active job, sent in the next ``step`` call.

    kind: ``p`` progress, ``l`` log, ``c`` complete, ``f`` fail, ``r`` release,
    ``d`` defer (delayed again without spending an attempt), ``x`` cancelled on request.
    """

    kind: str
    id: str
    token: int
    value: str = ""
    delay_ms: int = -1
    max_attempts: int = 1


class Leased(NamedTuple):
    id: str
    token: int
    attempt: int
    task: str
    payload: str


def step_args(settings: Settings, worker: str, want: int, updates: list[Update]) -> list[Any]:
    args: list[Any] = [
        settings.events_maxlen,
        int(settings.lease_seconds * 1000),
        want,
        worker,
        max(100, want),
        settings.completed_keep,
        _age_ms(settings.completed_age),
        settings.failed_keep,
        _age_ms(settings.failed_age),
        # One JSON argument instead of six per update: packing arguments is the costly part in Python. Not
        # ASCII-escaped: a lone surrogate would become a \ud800 escape the scripts' JSON decoder refuses (and
        # with it the whole step); sent as text, the connection replaces it with '?'.
        json.dumps(updates, separators=(",", ":"), ensure_ascii=False),
    ]
    return args


def parse_step(result: list[Any]) -> tuple[list[bool], list[Leased], float | None]:
    """(accepted flag per update, leased jobs, seconds until the next delayed job is due or None)."""
    accepted = [bool(int(flag)) for flag in result[0]]
    leased = [Leased(str(i), int(t), int(a), str(n), str(p)) for i, t, a, n, p in result[1]]
    next_due = int(result[2])
    return accepted, leased, None if next_due < 0 else next_due / 1000


def step_held(result: list[Any]) -> bool:
    """Whether a rate limit held back a waiting job in this step (it is due when ``next_due`` passes)."""
    return int(result[3]) >= 0


def step_lease_refused(result: list[Any]) -> str | None:
    """Why the step leased nothing though it was asked to (its updates were recorded): Redis is out of memory,
    or refused a command of the lease; None if neither."""
    why = result[4]
    if not why:
        return None
    if why == "OOM":
        return "Redis is out of memory (maxmemory reached): free memory or raise maxmemory"
    return f"Redis refused the lease: {why}"


def step_events_refused(result: list[Any]) -> str | None:
    """The error Redis gave a refused event of the step (the changes were made, their events lost), or None."""
    return str(result[5]) if result[5] else None


def renew_args(settings: Settings, held: list[tuple[str, int]]) -> list[Any]:
    args: list[Any] = [settings.events_maxlen, int(settings.lease_seconds * 1000)]
    for job_id, token in held:
        args += (job_id, token)
    return args


def parse_renew(result: list[Any]) -> tuple[list[str], list[str]]:
    """(ids whose lease was lost, held ids whose cancellation was requested)."""
    return [str(i) for i in result[0]], [str(i) for i in result[1]]


def cancel_args(settings: Settings, job_id: str) -> list[Any]:
    return [settings.events_maxlen, job_id, settings.failed_keep, _age_ms(settings.failed_age)]


def sweep_args(settings: Settings, limit: int = 500) -> list[Any]:
    return [settings.events_maxlen, settings.max_stalls, limit, settings.failed_keep, _age_ms(settings.failed_age)]


def _age_ms(seconds: float) -> int:
    return -1 if seconds < 0 else int(seconds * 1000)
