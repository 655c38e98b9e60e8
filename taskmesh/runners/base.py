"""The runner contract: :class:`BaseRunner`, the class a runner subclasses, and :class:`Runner`, the same contract
as a protocol for the worker's type hints; and the registry plugins add runners to."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigurationError
from ..factories import Factories

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task

#: The methods the worker calls on a runner, in the order it calls them.
METHODS = ("start", "run", "close")


class Runner(Protocol):
    """What the worker calls on a runner: :class:`BaseRunner`'s three methods (see there). A runner that does
    not subclass it must define all three."""

    async def start(self, tasks: Sequence[Task[Any, Any]]) -> None: ...

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any: ...

    async def close(self) -> None: ...


class BaseRunner(abc.ABC):
    """Runs attempts of tasks for one worker. Subclass it, implement :meth:`run`, and register the class from a
    plugin (``register.add(name, MyRunner)``): the worker builds it with the settings, calls :meth:`start` once
    before it leases anything, :meth:`run` once per attempt, and :meth:`close` when it stops.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self, tasks: Sequence[Task[Any, Any]]) -> None:
        """Called once before the worker leases anything, with the tasks that use this runner: check their
        ``runner_options`` (raise :class:`taskmesh.ConfigurationError` to refuse start-up) and do the runner's
        own start-up work. By default, nothing."""
        return None

    @abc.abstractmethod
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run one attempt of ``task`` for ``job``; return the task's result or raise its error.

        ``args`` and ``kwargs`` are the job's own arguments; a task that takes the :class:`~taskmesh.Job` gets it
        first, so call the task with :meth:`call_args` (``task.fn(*self.call_args(task, job, args), **kwargs)``),
        wherever it runs. The worker cancels ``run`` on a timeout, a cancel request or the hand-back at shutdown:
        stop the work, then let ``CancelledError`` through.
        """

    async def close(self) -> None:
        """Release what the runner holds; called when the worker stops, also when a runner's :meth:`start`
        failed or never ran. By default, nothing."""
        return None

    @staticmethod
    def call_args(task: Task[Any, Any], job: Job, args: Sequence[Any]) -> Sequence[Any]:
        """The positional arguments ``task.fn`` is called with: the job first when the task takes it, then the
        job's own arguments."""
        return [job, *args] if task.takes_job else args


class RunnerRegistry(Factories[Runner]):
    """Passed to ``taskmesh_register_runners``: collects runner factories by name."""

    kind = "runner"

    def build(self, settings: Settings, names: Iterable[str]) -> dict[str, Runner]:
        """The runners ``names`` lists; one without ``start``, ``run`` and ``close`` is a start-up error."""
        runners = super().build(settings, names)
        for name, runner in runners.items():
            missing = [method for method in METHODS if not callable(getattr(runner, method, None))]
            if missing:
                raise ConfigurationError(
                    f"runner {name!r} ({type(runner).__qualname__}) has no {', '.join(missing)}: subclass "
                    "taskmesh.runners.BaseRunner (its start and close do nothing by default) and implement run"
                )
        return runners
