"""Every extension point of taskmesh, grouped by phase. Each docstring is the reference.

Hooks are for registration and configuration only (pluggy calls are
synchronous); per-job work goes through the objects they register.
A plugin is a module or object with functions marked ``@taskmesh.hookimpl``,
listed under the ``taskmesh`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .runners.base import RunnerRegistry
    from .settings import Settings
    from .sinks.base import SinkRegistry

hookspec = pluggy.HookspecMarker("taskmesh")

# -- start-up: configuration -------------------------------------------------


@hookspec
def taskmesh_configure(settings: Settings) -> None:
    """Called once when a worker starts, with its final settings, before runners are built.

    Use it to read settings or validate a plugin's own configuration; raise
    :class:`taskmesh.ConfigurationError` to refuse start-up.
    """


# -- start-up: registration ----------------------------------------------------


@hookspec
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    """Register execution backends: ``register.add("name", factory)``.

    ``factory(settings)`` returns a :class:`taskmesh.runners.Runner`. A task
    picks one with ``@task(runner="name")``; a task naming an unknown runner is
    a start-up error. The built-in ``inline`` runner registers through this hook.
    """


@hookspec
def taskmesh_register_sinks(register: SinkRegistry) -> None:
    """Register event sinks: ``register.add("name", factory)``.

    ``factory(settings)`` returns a :class:`taskmesh.sinks.Sink`, whose ``async emit(event)`` receives
    lifecycle events through the worker's bounded event bus (a slow or failing sink never blocks
    dispatch). Only sinks named in the ``sinks`` setting are built; an unknown name there is a
    start-up error. The built-in ``log`` sink registers through this hook.
    """
