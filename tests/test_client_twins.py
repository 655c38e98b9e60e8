"""Sync and async twins: the sync client is written from the async one, and every public sync call that talks
to Redis has an ``a``-prefixed async twin with the same signature (and every async one its sync twin)."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import unasync

from taskmesh import Client, JobHandle, JobState, Task, TaskCall

#: Public methods that send nothing to Redis, so have no twin.
NOT_IO: dict[type, set[str]] = {Client: {"keys"}, JobHandle: set(), Task: {"call", "options"}, TaskCall: {"call"}}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The class's public methods, inherited ones too; deprecated aliases and properties left out."""
    found = {}
    for name in dir(cls):
        value = inspect.getattr_static(cls, name)
        if not name.startswith("_") and inspect.isfunction(value) and not hasattr(value, "__deprecated__"):
            found[name] = value
    return found


def is_async(method: Callable[..., Any]) -> bool:
    returns = inspect.signature(method).return_annotation
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method) or "AsyncIterator[" in returns


def shape(method: Callable[..., Any]) -> str:
    """The signature as text (parameters with their kinds, defaults and annotations), an async return
    unwrapped: ``Awaitable[X]`` reads ``X``, ``AsyncIterator[X]`` reads ``Iterator[X]``."""
    signature = inspect.signature(method)  # through the guards' functools.wraps
    returns = re.sub(r"^Awaitable\[(.*)\]$", r"\1", signature.return_annotation)
    returns = re.sub(r"^Async(Iterator|Iterable)\[", r"\1[", returns)
    return str(signature.replace(return_annotation=returns))


def twin_mismatches(cls: type, not_io: set[str]) -> list[str]:
    methods = public_methods(cls)
    wrong = [f"{cls.__name__}.{name} is listed as no I/O but is not a method" for name in sorted(not_io - set(methods))]
    for name, method in methods.items():
        if name in not_io:
            continue
        twin = name[1:] if is_async(method) else f"a{name}"
        other = methods.get(twin)
        if is_async(method) and not name.startswith("a"):
            wrong.append(f"{cls.__name__}.{name} is async but not named a...")
        elif other is None or is_async(other) == is_async(method):
            wrong.append(f"{cls.__name__}.{name} has no {'sync' if is_async(method) else 'async'} twin {twin}")
        elif shape(method) != shape(other):
            wrong.append(f"{cls.__name__}.{name} {shape(method)} differs from {twin} {shape(other)}")
    return wrong


@pytest.mark.parametrize("cls", [Client, JobHandle, Task, TaskCall], ids=lambda cls: cls.__name__)
def test_every_sync_call_has_an_async_twin_with_the_same_signature_and_the_reverse(cls: type) -> None:
    assert twin_mismatches(cls, NOT_IO[cls]) == []


def test_a_missing_or_different_twin_is_reported() -> None:
    class Handle:
        def status(self, queue: str = "default") -> int: ...

        async def astatus(self, queue: str = "other") -> int: ...

        def cancel(self) -> str: ...

        async def aresult(self) -> int: ...

        async def fetch(self) -> int: ...

        def rows(self) -> list[int]: ...

        def arows(self) -> AsyncIterator[str]: ...

    assert twin_mismatches(Handle, {"gone"}) == [
        "Handle.gone is listed as no I/O but is not a method",
        "Handle.aresult has no sync twin result",
        "Handle.arows (self) -> 'Iterator[str]' differs from rows (self) -> 'list[int]'",
        "Handle.astatus (self, queue: 'str' = 'other') -> 'int' differs from status "
        "(self, queue: 'str' = 'default') -> 'int'",
        "Handle.cancel has no async twin acancel",
        "Handle.fetch is async but not named a...",
        "Handle.rows (self) -> 'list[int]' differs from arows (self) -> 'Iterator[str]'",
        "Handle.status (self, queue: 'str' = 'default') -> 'int' differs from astatus "
        "(self, queue: 'str' = 'other') -> 'int'",
    ]


def test_the_sync_client_is_what_unasync_writes_from_the_async_client() -> None:
    text = unasync.CLIENT.read_text()
    assert unasync.generate(text) == text, "taskmesh/client.py is out of date: run .venv/bin/python tests/unasync.py"


def test_unasync_renames_the_methods_it_defines_and_drops_await() -> None:
    source = [
        "    @connect.aguard",
        "    async def await_job(self, job_id: str) -> AsyncIterator[str]:",
        '        """Like :meth:`astatus`, not :meth:`await_job` of ``astore``."""',
        "        store = self.astore",
        "        async for entry in self._afollow(job_id):",
        "            yield await self.astatus(entry) + await store.read(entry)",
    ]
    assert unasync.unasync("\n".join(source)).splitlines() == [
        "    @connect.guard",
        "    def wait_job(self, job_id: str) -> Iterator[str]:",
        '        """Like :meth:`astatus`, not :meth:`wait_job` of ``astore``."""',
        "        store = self.store",
        "        for entry in self._afollow(job_id):",
        "            yield self.astatus(entry) + store.read(entry)",
    ]


def test_queues_and_workers_have_async_twins_that_answer_alike(taskmesh_client: Client) -> None:
    taskmesh_client.enqueue("twins.job")
    taskmesh_client.enqueue_many([])

    async def read() -> tuple[list[str], list[str]]:
        return await taskmesh_client.aqueues(), await taskmesh_client.aworkers()

    assert asyncio.run(read()) == (taskmesh_client.queues(), taskmesh_client.workers()) == (["default"], [])


def test_wait_and_await_are_deprecated_names_of_wait_job_and_await_job(taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("twins.job")
    assert taskmesh_client.cancel(handle.id) == "cancelled"
    with pytest.deprecated_call(match="wait_job"):
        status = taskmesh_client.wait(handle.id, timeout=1)
    assert status is not None and status.state is JobState.CANCELLED
    with pytest.deprecated_call(match="await_job"):
        status = asyncio.run(taskmesh_client.await_(handle.id, timeout=1))
    assert status is not None and status.state is JobState.CANCELLED
    assert taskmesh_client.wait_job(handle.id, timeout=1) == status
