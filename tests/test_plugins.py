"""Runners arrive through the pluggy hook, built-in and third-party alike."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from typing_extensions import override

from taskmesh import Client, ConfigurationError, Job, Registry, Settings, Task, Worker, hookimpl, task
from taskmesh.runners import BaseRunner, RunnerRegistry
from taskmesh.testing import drain


class UpperRunner(BaseRunner):
    """Runs the task on the loop and upper-cases string results, to prove it was used; only ``run`` is its own
    (the base's ``__init__``, ``start`` and ``close`` serve)."""

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return str(task.fn(*self.call_args(task, job, args), **kwargs)).upper()


class StartlessRunner:
    """A runner written without ``BaseRunner`` that forgot ``start``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return task.fn(*args, **kwargs)

    async def close(self) -> None:
        return None


class UpperPlugin:
    @hookimpl
    def taskmesh_register_runners(self, register: RunnerRegistry) -> None:
        register.add("upper", UpperRunner)


@task(runner="upper")
def shout(word: str) -> str:
    return word


@task(name="plugins.shout_attempt", runner="upper")
def shout_attempt(job: Job, word: str) -> str:
    return f"{word} {job.attempt}"


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


def test_a_base_runner_hands_the_job_first_to_a_task_that_takes_it(taskmesh_client: Client) -> None:
    handle = shout_attempt.enqueue("hi")
    worker = Worker.create(Registry([shout_attempt]), taskmesh_client.settings, burst=True, plugins=[UpperPlugin()])
    asyncio.run(worker.run())
    assert handle.result(timeout=5) == "HI 1"


def test_a_runner_without_start_run_and_close_stops_the_worker_at_start_up() -> None:
    class StartlessPlugin:
        @hookimpl
        def taskmesh_register_runners(self, register: RunnerRegistry) -> None:
            register.add("startless", StartlessRunner)  # type: ignore[arg-type]

    quiet = task(name="plugins.quiet", runner="startless")(lambda: None)
    with pytest.raises(ConfigurationError) as info:
        Worker.create(Registry([quiet]), Settings(), entry_points=False, plugins=[StartlessPlugin()])
    assert str(info.value) == (
        "runner 'startless' (StartlessRunner) has no start: subclass taskmesh.runners.BaseRunner "
        "(its start and close do nothing by default) and implement run"
    )


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
