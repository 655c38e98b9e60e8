"""Runners arrive through the pluggy hook, built-in and third-party alike."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, Job, Registry, Settings, Task, Worker, hookimpl, task
from taskmesh.runners import RunnerRegistry
from taskmesh.testing import drain


class UpperRunner:
    """Runs the task inline and upper-cases string results, to prove it was used."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return str(task.fn(*args, **kwargs)).upper()

    async def close(self) -> None:
        pass


class UpperPlugin:
    @hookimpl
    def taskmesh_register_runners(self, register: RunnerRegistry) -> None:
        register.add("upper", UpperRunner)


@task(runner="upper")
def shout(word: str) -> str:
    return word


@task(runner="nope")
def orphan() -> None: ...


def test_task_naming_unknown_runner_fails_at_start_up_listing_known_runners() -> None:
    with pytest.raises(ConfigurationError) as info:
        Worker.create(Registry([orphan]), Settings(), entry_points=False)
    assert "nope" in str(info.value)
    assert "inline" in str(info.value)


def test_third_party_runner_registered_through_the_hook_runs_the_task(taskmesh_client: Client) -> None:
    handle = shout.enqueue("hi")
    worker = Worker.create(Registry([shout]), taskmesh_client.settings, burst=True, plugins=[UpperPlugin()])
    assert set(worker.runners) == {"inline", "upper"}
    asyncio.run(worker.run())
    assert handle.result(timeout=5) == "HI"


def test_builtin_inline_runner_uses_the_same_hook(taskmesh_client: Client) -> None:
    from taskmesh.plugins import plugin_manager

    register = RunnerRegistry()
    plugin_manager(entry_points=False).hook.taskmesh_register_runners(register=register)
    assert "inline" in register.factories
    handle = shout.options(client=taskmesh_client).enqueue("x")
    with pytest.raises(ConfigurationError, match="upper"):
        drain(taskmesh_client, [shout])
    assert handle.status().state == "waiting"


def test_runner_and_sink_names_are_checked_and_unique_alike() -> None:
    from taskmesh.sinks import SinkRegistry

    for registry, kind in ((RunnerRegistry(), "runner"), (SinkRegistry(), "sink")):
        with pytest.raises(ConfigurationError, match=f"invalid {kind} name 'no spaces'"):
            registry.add("no spaces", lambda settings: None)  # type: ignore[arg-type,return-value]
        registry.add("one", lambda settings: None)  # type: ignore[arg-type,return-value]
        with pytest.raises(ConfigurationError, match=f"two plugins register a {kind} named 'one'"):
            registry.add("one", lambda settings: None)  # type: ignore[arg-type,return-value]
