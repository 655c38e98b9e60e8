"""``taskmesh schedules``: list schedules with their next and last ticks; add, remove, pause, resume."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime

from ..schedule import CATCH_UP_MAX, MISFIRE_GRACE, Schedule, from_ms
from .common import CliError, add_common_options, connect, escape, load_settings, print_json, table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "schedules",
        help="list, add, remove, pause or resume schedules",
        description="Without an action: every schedule with its next and last tick. Changes apply to every "
        "worker's scheduler at its next look (within a second).",
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=list_command)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    add = actions.add_parser("add", help="add or change a schedule (by name)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("task", metavar="TASK", help="the task's name")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='a cron expression, e.g. "0 3 * * *"')
    when.add_argument("--every", type=float, metavar="SECONDS", help="a fixed interval, at least 1 s")
    add.add_argument("--tz", default="UTC", help="IANA time zone the cron expression is read in (default UTC)")
    add.add_argument("--args", default="[]", metavar="JSON", help="the scheduled run's arguments (a JSON list)")
    add.add_argument("--kwargs", default="{}", metavar="JSON", help="its keyword arguments (a JSON object)")
    add.add_argument("--queue", "-q", default="default", metavar="Q")
    add.add_argument("--priority", type=int, default=0)
    add.add_argument("--misfire", choices=["skip", "catch_up"], default="skip")
    add.add_argument("--misfire-grace", type=float, default=MISFIRE_GRACE, metavar="SECONDS", help="for --misfire skip")
    add.add_argument("--catch-up-max", type=int, default=CATCH_UP_MAX, metavar="N", help="for --misfire catch_up")
    add.add_argument("--overlap", choices=["allow", "skip"], default="allow")
    add.add_argument("--start", type=_when, metavar="ISO", help="first possible tick (ISO 8601 with offset)")
    add.add_argument("--end", type=_when, metavar="ISO", help="last possible tick (ISO 8601 with offset)")
    add_common_options(add)
    add.set_defaults(handler=add_command)

    for name, text in (("remove", "remove a schedule"), ("pause", "stop firing it"), ("resume", "fire it again")):
        action = actions.add_parser(name, help=text)
        action.add_argument("name", metavar="NAME")
        add_common_options(action)
        action.set_defaults(handler=change_command, op=name)


def list_command(args: argparse.Namespace) -> int:
    client = connect(load_settings(args))
    try:
        infos = client.schedules()
    finally:
        client.close()
    for info in infos:
        if info.skipped is not None:
            name, why = escape(info.entry.name), escape(info.skipped)
            print(f"taskmesh: the schedulers skip schedule {name}: {why}", file=sys.stderr)
    if args.json:
        print_json([info.to_dict() for info in infos])
        return 0
    if not infos:
        print("no schedules")
        return 0
    rows = [["NAME", "TASK", "QUEUE", "WHEN", "STATE", "NEXT", "LAST"]]
    for info in infos:
        entry = info.entry
        row = [entry.name, entry.task, entry.queue, entry.schedule.describe, info.status]
        rows.append([*row, _at(info.next_tick), _at(info.last_tick)])
    print(table(rows))
    return 0


def add_command(args: argparse.Namespace) -> int:
    try:
        call_args, call_kwargs = json.loads(args.args), json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise CliError(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        raise CliError("--args must be a JSON list and --kwargs a JSON object")
    schedule = Schedule(
        cron=args.cron,
        every=args.every,
        tz=args.tz,
        args=call_args,
        kwargs=call_kwargs,
        misfire=args.misfire,
        misfire_grace=args.misfire_grace,
        catch_up_max=args.catch_up_max,
        overlap=args.overlap,
        start=args.start,
        end=args.end,
    )
    client = connect(load_settings(args))
    try:
        client.schedule(args.name, args.task, schedule, queue=args.queue, priority=args.priority)
    finally:
        client.close()
    following = from_ms(schedule.next_tick(round(time.time() * 1000)))
    print(f"{args.name}: {schedule.describe} -> {args.task} (queue {args.queue}); next {_at(following)}")
    return 0


def change_command(args: argparse.Namespace) -> int:
    client = connect(load_settings(args))
    try:
        op = {"remove": client.remove_schedule, "pause": client.pause_schedule, "resume": client.resume_schedule}
        if not op[args.op](args.name):
            raise CliError(f"no schedule named {args.name!r}")
    finally:
        client.close()
    print(f"{escape(args.name)}: {args.op}d")
    return 0


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("give a time zone offset, e.g. 2026-12-01T00:00:00+00:00")
    return when


def _at(when: datetime | None) -> str:
    return "-" if when is None else when.astimezone().isoformat(sep=" ", timespec="seconds")
