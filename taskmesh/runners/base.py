"""The Runner contract and the registry plugins add runners to."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task


class Runner(Protocol):
    """Runs one attempt of a task. ``args`` already include the ``Job`` when the task takes one.

    A runner may also define ``async def start(self, tasks: Sequence[Task]) -> None``: the worker calls it
    once before it leases anything, with the tasks that use this runner, so the runner can check their
    ``runner_options`` (raise :class:`taskmesh.ConfigurationError` to refuse start-up) and do its own
    start-up work.
    """

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Return the task's result or raise its error."""
        ...

    async def close(self) -> None:
        """Release resources when the worker stops."""
        ...


RunnerFactory = Callable[["Settings"], Runner]


class RunnerRegistry:
    """Passed to ``taskmesh_register_runners``: collects runner factories by name."""

    def __init__(self) -> None:
        self.factories: dict[str, RunnerFactory] = {}

    def add(self, name: str, factory: RunnerFactory) -> None:
        if name in self.factories:
            raise ConfigurationError(f"two plugins register a runner named {name!r}")
        self.factories[name] = factory

    def build(self, settings: Settings, needed: set[str]) -> dict[str, Runner]:
        """Build the runners the tasks use; an unknown name is a start-up error listing the known ones."""
        unknown = needed - set(self.factories)
        if unknown:
            raise ConfigurationError(
                f"unknown runner(s) {', '.join(sorted(unknown))}; known runners: {', '.join(sorted(self.factories))}"
            )
        return {name: self.factories[name](settings) for name in sorted(needed)}
