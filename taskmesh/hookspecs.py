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
    from .settings import PluginSettingsRegistry, Settings
    from .sinks.base import SinkRegistry

hookspec = pluggy.HookspecMarker("taskmesh")

# -- start-up: configuration -------------------------------------------------


@hookspec
def taskmesh_declare_settings(register: PluginSettingsRegistry) -> None:
    """Declare a plugin's own settings: ``register.add("name", SettingsClass)``.

    ``SettingsClass`` is a dataclass whose fields each have a default and a type among ``str``, ``int``,
    ``float``, ``bool`` and ``tuple[str, ...]`` (or one of them ``| None``). Field ``field`` of plugin
    ``name`` is read, highest first, from the environment variable ``TASKMESH_<NAME>_<FIELD>`` (an empty
    one counts as unset), from ``field`` in ``[tool.taskmesh.<name>]`` of the pyproject.toml the core
    settings were read from, else it is the default. The plugin reads them with
    :func:`taskmesh.plugins.plugin_settings` (``plugin_settings("name", SettingsClass, settings)``).

    A key of ``[tool.taskmesh.<name>]`` that is no field, or a value that is not of its field's type, is a
    :class:`taskmesh.ConfigurationError` when the settings are read, and when a worker starts (every
    declared plugin's settings are checked then, used or not). ``taskmesh config`` shows each value and
    where it came from; mark a field ``metadata={"secret": True}`` to show it as ``***``, or
    ``metadata={"mask": function}`` to show ``function(value)``. A name, or a variable, that is a core
    setting's or another plugin's is refused.
    """


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
