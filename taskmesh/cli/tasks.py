"""``taskmesh tasks``: list the tasks a worker would discover."""

from __future__ import annotations

import argparse
from typing import Any

from ..registry import Registry
from ..task import Task
from .common import add_common_options, load_settings, print_json, table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "tasks",
        help="list discovered tasks",
        description="List the tasks `taskmesh run` would discover: from the named modules, else the `modules` "
        "setting, else every `taskmesh.tasks` entry point. Two tasks with one name are an error.",
    )
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="task modules to import")
    parser.add_argument("--json", action="store_true", help="print the tasks as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    settings = load_settings(args, modules=tuple(args.modules) or None)
    registry = Registry.discover(settings.modules)
    if args.json:
        print_json([_entry(task) for task in registry])
    elif not len(registry):
        print("no tasks found")
    else:
        rows = [["NAME", "QUEUE", "RUNNER", "RETRIES", "TIMEOUT", "LOCATION"]]
        rows += [[t.name, t.queue, t.runner, str(t.retries), _seconds(t.timeout), t.location] for t in registry]
        print(table(rows))
    return 0


def _entry(task: Task[Any, Any]) -> dict[str, Any]:
    return {
        "name": task.name,
        "queue": task.queue,
        "runner": task.runner,
        "retries": task.retries,
        "timeout": task.timeout,
        "location": task.location,
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"
