"""``taskmesh plugins``: the plugins a worker would load, their versions and what they provide."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from typing import Any

import pluggy

from ..plugins import BUILTIN_PLUGINS, installed_entry_points, plugin_manager, selected_entry_points
from ..runners.base import RunnerRegistry
from ..sinks.base import SinkRegistry
from .common import add_common_options, load_settings, print_json, table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "plugins",
        help="list plugins and what they provide",
        description="List the built-in plugins and every plugin installed under the `taskmesh` entry-point group: "
        "loaded, blocked (the disable_plugins setting) or not allowed (not in the plugins setting), with the "
        "distribution and version it comes from and the runners and sinks it registers.",
    )
    parser.add_argument("--json", action="store_true", help="print the plugins as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    pm = plugin_manager(allow=settings.plugins, block=settings.disable_plugins)
    provided = provides(pm)
    own = version("taskmesh")
    plugins = [_entry(name, "built-in", "taskmesh", own, provided[name]) for name in BUILTIN_PLUGINS]
    loaded = {ep.name for ep in selected_entry_points(settings.plugins, settings.disable_plugins)}
    for ep in installed_entry_points():
        blocked = "blocked" if ep.name in settings.disable_plugins else "not allowed"
        status = "loaded" if ep.name in loaded else blocked
        dist = ep.dist
        name, release = (dist.metadata["Name"], dist.version) if dist is not None else ("?", "?")
        plugins.append(_entry(ep.name, status, name, release, provided.get(ep.name, {})))
    if args.json:
        print_json(plugins)
        return 0
    rows = [["NAME", "STATUS", "DISTRIBUTION", "VERSION", "PROVIDES"]]
    for p in plugins:
        offers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p["provides"].items() if names)
        rows.append([p["name"], p["status"], p["distribution"], p["version"], offers or "-"])
    print(table(rows))
    return 0


def provides(pm: pluggy.PluginManager) -> dict[str, dict[str, list[str]]]:
    """Plugin name -> the runners and sinks its hooks register (each hook called on its own)."""
    out: dict[str, dict[str, list[str]]] = {name: {"runners": [], "sinks": []} for name, _ in pm.list_name_plugin()}
    for impl in pm.hook.taskmesh_register_runners.get_hookimpls():
        runners = RunnerRegistry()
        impl.function(register=runners)
        out[impl.plugin_name]["runners"] = sorted(runners.factories)
    for impl in pm.hook.taskmesh_register_sinks.get_hookimpls():
        sinks = SinkRegistry()
        impl.function(register=sinks)
        out[impl.plugin_name]["sinks"] = sorted(sinks.factories)
    return out


def _entry(name: str, status: str, distribution: str, release: str, offers: dict[str, list[str]]) -> dict[str, Any]:
    return {"name": name, "status": status, "distribution": distribution, "version": release, "provides": offers}
