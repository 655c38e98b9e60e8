"""The hookimpl marker and plugin manager construction (no global manager)."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from . import hookspecs

PLUGIN_GROUP = "taskmesh"

hookimpl = pluggy.HookimplMarker("taskmesh")

#: Built-in plugins, registered exactly as third-party ones are.
BUILTIN_PLUGINS = ("taskmesh.runners.inline", "taskmesh.runners.subprocess")


def plugin_manager(extra: Iterable[object] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """Built-ins, then the ``taskmesh`` entry points, then ``extra`` plugin objects."""
    import importlib

    pm = pluggy.PluginManager("taskmesh")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(PLUGIN_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm
