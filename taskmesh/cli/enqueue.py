"""``taskmesh enqueue``: queue a job by task name and print its id."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..job import Call
from .common import CliError, add_common_options, connect, load_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "enqueue",
        help="queue a job by task name; prints the job id",
        description="Queue a job by task name and print its id. The task's code is not imported, so its "
        "queue and priority are not known here: name them with --queue and --priority.",
    )
    parser.add_argument("task", metavar="NAME", help="task name, e.g. reports.export")
    parser.add_argument("--args", metavar="JSON", help="positional arguments as a JSON array, e.g. '[1, 2]'")
    parser.add_argument("--kwargs", metavar="JSON", help="keyword arguments as a JSON object, e.g. '{\"x\": 1}'")
    parser.add_argument("--delay", type=float, metavar="S", help="run no earlier than S seconds from now")
    parser.add_argument("--job-id", metavar="ID", help="job id; an existing id returns that job, nothing new")
    parser.add_argument("--queue", "-q", default="default", metavar="Q", help="queue (default: default)")
    parser.add_argument("--priority", type=int, default=0, metavar="P", help="-1000..1000, higher first (default 0)")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    positional = _json_flag("--args", args.args, list, "a JSON array, e.g. '[1, 2]'") or []
    keywords = _json_flag("--kwargs", args.kwargs, dict, "a JSON object, e.g. '{\"x\": 1}'") or {}
    if args.delay is not None and args.delay < 0:
        raise CliError(f"--delay must be >= 0 seconds, not {args.delay}")
    call = Call(
        args.task,
        tuple(positional),
        keywords,
        queue=args.queue,
        job_id=args.job_id,
        delay=args.delay,
        priority=args.priority,
    )
    client = connect(load_settings(args))
    try:
        handle = client.submit(call)
        print(handle.id, flush=True)
        if not handle.created:
            status = client.status(handle.id, handle.queue)
            state = status.state.value if status is not None else "unknown"
            print(f"taskmesh: job {handle.id} already exists (state {state}); nothing new was queued", file=sys.stderr)
    finally:
        client.close()
    return 0


def _json_flag(flag: str, text: str | None, kind: type, expected: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} is not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(value, kind):
        raise CliError(f"{flag} must be {expected}, not {type(value).__name__}")
    return value
