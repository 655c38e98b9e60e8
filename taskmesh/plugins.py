"""The hookimpl marker and plugin manager construction (no global manager).

A plugin declares its own settings with :class:`PluginSettingsRegistry` (the ``taskmesh_declare_settings``
hook) and reads them with :func:`plugin_settings`, both from here."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import pluggy

from . import hookspecs
from .errors import ConfigurationError
from .settings import PluginSettingsRegistry as PluginSettingsRegistry
from .settings import Settings, resolve_plugin_settings
from .settings import plugin_settings as plugin_settings

PLUGIN_GROUP = "taskmesh"

hookimpl = pluggy.HookimplMarker("taskmesh")

#: Built-in plugins, registered exactly as third-party ones are.
BUILTIN_PLUGINS = ("taskmesh.runners.inline", "taskmesh.runners.subprocess", "taskmesh.sinks.jsonlog")
#: The name under which every plugin manager holds the check of the plugins' declared settings.
SETTINGS_CHECK = "taskmesh.plugin_settings"


def plugin_manager(
    extra: Iterable[object] = (),
    *,
    entry_points: bool = True,
    allow: Iterable[str] = (),
    block: Iterable[str] = (),
) -> pluggy.PluginManager:
    """Built-ins, then the ``taskmesh`` entry points (only ``allow``-ed ones when given, never ``block``-ed
    ones), then ``extra`` plugin objects. A plugin that cannot be loaded is a start-up error."""
    pm = pluggy.PluginManager("taskmesh")
    pm.add_hookspecs(hookspecs)
    pm.register(_PluginSettingsCheck(pm), name=SETTINGS_CHECK)
    try:
        for name in BUILTIN_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        if entry_points:
            for ep in selected_entry_points(allow, block):
                _register(pm, _load(ep), ep.name)
        for plugin in extra:
            _register(pm, plugin, None)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigurationError(f"plugin {exc.plugin!r} is not valid: {exc}") from None
    return pm


def declared_settings(pm: pluggy.PluginManager) -> PluginSettingsRegistry:
    """The settings classes the plugins of ``pm`` declare (the ``taskmesh_declare_settings`` hook)."""
    register = PluginSettingsRegistry()
    pm.hook.taskmesh_declare_settings(register=register)
    return register


class _PluginSettingsCheck:
    """Reads every declared plugin's settings when a worker starts, before any plugin's own
    ``taskmesh_configure``: a mistake in ``[tool.taskmesh.<plugin>]`` or ``TASKMESH_<PLUGIN>_*`` stops the
    worker there, whether or not the plugin is used."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    @hookimpl(tryfirst=True)
    def taskmesh_configure(self, settings: Settings) -> None:
        for name, schema in declared_settings(self.pm).schemas.items():
            resolve_plugin_settings(name, schema, pyproject=settings.pyproject)


def installed_entry_points() -> list[EntryPoint]:
    """Every plugin installed under the ``taskmesh`` entry-point group, by name."""
    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)


def selected_entry_points(allow: Iterable[str] = (), block: Iterable[str] = ()) -> list[EntryPoint]:
    """The installed plugins the ``plugins`` (allow) and ``disable_plugins`` (block) settings leave."""
    allow, block = set(allow), set(block)
    installed = installed_entry_points()
    missing = allow - {ep.name for ep in installed}
    if missing:
        known = ", ".join(ep.name for ep in installed) or "none"
        raise ConfigurationError(
            f"plugin(s) {', '.join(sorted(missing))} named in the plugins setting are not installed; installed: {known}"
        )
    return [ep for ep in installed if (not allow or ep.name in allow) and ep.name not in block]


def _load(ep: EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise ConfigurationError(
            f"cannot load plugin {ep.name} = {ep.value}: {exc!r} (uninstall it or add it to disable_plugins)"
        ) from exc


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except ValueError as exc:  # the name or the object is registered already
        raise ConfigurationError(f"cannot register plugin {name or plugin!r}: {exc}") from None
