"""``taskmesh config``: the value of every setting, the core's and the plugins', and where each came from."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..plugins import declared_settings, plugin_manager
from ..settings import ENV_PREFIX, SETTING_NAMES, Origin, PluginSetting, plugin_tables, resolve_plugin_settings
from ..urls import redact
from .common import add_common_options, escape, print_json, resolve, table

HELP = """\
Show the value of every setting a client or a worker started here would use, and where it came from:
a flag, a TASKMESH_* environment variable, [tool.taskmesh] of the nearest pyproject.toml (looked for in
the current directory, then its parents up to the repository's root), or the default. The plugins a
worker would load add their own settings ([tool.taskmesh.<plugin>], TASKMESH_<PLUGIN>_<NAME>).

Passwords in URLs are shown as ***, as are the settings a plugin marks secret.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "config",
        help="show every setting's value and where it came from",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the settings as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    resolved = resolve(args)
    settings = resolved.settings
    pm = plugin_manager(allow=settings.plugins, block=settings.disable_plugins)
    schemas = declared_settings(pm).schemas
    plugins = [resolve_plugin_settings(name, schemas[name], pyproject=settings.pyproject) for name in sorted(schemas)]
    core = {
        name: _entry(getattr(settings, name), resolved.origins[name], ENV_PREFIX + name.upper())
        for name in SETTING_NAMES
    }
    declared = {
        plugin.name: {
            s.name: _entry(getattr(plugin.settings, s.name), plugin.origins[s.name], s.env, s) for s in plugin.declared
        }
        for plugin in plugins
    }
    unclaimed = [name for name in plugin_tables(settings.pyproject) if name not in schemas]
    for name in unclaimed:
        print(
            f"taskmesh: ignoring [tool.taskmesh.{escape(name)}] of {escape(settings.pyproject)}: "
            f"no plugin loaded here declares settings named {escape(name)}",
            file=sys.stderr,
        )
    if args.json:
        print_json({"pyproject": _path(settings.pyproject), "settings": core, "plugins": declared})
        return 0
    print(f"pyproject: {escape(settings.pyproject or _none_found())}")
    rows = [["SETTING", "VALUE", "SOURCE"]]
    rows += [[name, _text(entry["value"]), entry["origin"]] for name, entry in core.items()]
    for plugin, entries in declared.items():
        rows += [[f"{plugin}.{name}", _text(entry["value"]), entry["origin"]] for name, entry in entries.items()]
    print(table(rows))
    return 0


def _entry(value: Any, origin: Origin, env: str, setting: PluginSetting | None = None) -> dict[str, Any]:
    """One setting as ``taskmesh config`` shows it: the value (masked), the kind of source, the source, the variable."""
    return {"value": shown(value, setting), "source": origin.kind, "origin": str(origin), "env": env}


def shown(value: Any, setting: PluginSetting | None = None) -> Any:
    """``value`` fit to show: ``***`` for a secret that is set, a plugin's own mask applied, the passwords of
    URLs (``scheme://user:password@...``, ``?password=...``) masked; tuples as lists."""
    if setting is not None and setting.secret:
        return "***" if value not in (None, "", ()) else value
    if setting is not None and setting.mask is not None and isinstance(value, str) and value:
        return setting.mask(value)
    if isinstance(value, tuple):
        return [shown(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact(value)
    return value


def _text(value: Any) -> str:
    """A value as it is written in an environment variable: lists joined with commas, booleans in lower case."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _none_found() -> str:
    return f"none (no pyproject.toml with [tool.taskmesh] in {Path.cwd()} or above it)"
