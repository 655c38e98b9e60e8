"""Collect Task objects from modules or the ``taskmesh.tasks`` entry-point group."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from .errors import ConfigurationError, DuplicateTaskError
from .task import Task

TASKS_GROUP = "taskmesh.tasks"


class Registry:
    """Tasks by name. Built explicitly; there is no global registry."""

    def __init__(self, tasks: Iterable[Task[Any, Any]] = ()) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        for task in tasks:
            self.add(task)

    def add(self, task: Task[Any, Any]) -> None:
        other = self._tasks.get(task.name)
        if other is not None and other is not task:
            raise DuplicateTaskError(
                f"two tasks are named {task.name!r}: {other.location} and {task.location}; give one a different name="
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(sorted(self._tasks.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    @property
    def queues(self) -> list[str]:
        return sorted({t.queue for t in self._tasks.values()})

    def add_module(self, module: ModuleType) -> None:
        """Add every Task defined at the top level of ``module``."""
        for value in vars(module).values():
            if isinstance(value, Task):
                self.add(value)

    @classmethod
    def from_modules(cls, names: Iterable[str]) -> Registry:
        """Import the named modules (the current directory on ``sys.path``) and collect their tasks."""
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        registry = cls()
        for name in names:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigurationError(f"cannot import task module {name!r}: {exc}") from exc
            registry.add_module(module)
        return registry

    @classmethod
    def from_entry_points(cls) -> Registry:
        """Load every module registered under the ``taskmesh.tasks`` entry-point group."""
        registry = cls()
        for ep in entry_points(group=TASKS_GROUP):
            try:
                loaded = ep.load()
            except ImportError as exc:
                raise ConfigurationError(f"cannot load task entry point {ep.name} = {ep.value}: {exc}") from exc
            if isinstance(loaded, ModuleType):
                registry.add_module(loaded)
            elif isinstance(loaded, Task):
                registry.add(loaded)
            else:
                raise ConfigurationError(f"entry point {ep.name} = {ep.value} is neither a module nor a Task")
        return registry

    @classmethod
    def discover(cls, modules: Iterable[str] = ()) -> Registry:
        """The named modules, or every ``taskmesh.tasks`` entry point when none is named."""
        modules = list(modules)
        return cls.from_modules(modules) if modules else cls.from_entry_points()
