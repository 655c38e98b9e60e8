"""The Runner contract and the registry plugins add runners to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..factories import Factories

if TYPE_CHECKING:
    from ..job import Job
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


class RunnerRegistry(Factories[Runner]):
    """Passed to ``taskmesh_register_runners``: collects runner factories by name."""

    kind = "runner"
