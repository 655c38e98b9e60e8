"""``taskmesh status``: one job's state, progress, result or error."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from ..job import JobState, JobStatus
from .common import CliError, add_common_options, connect, escape, load_settings, print_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="show one job", description="Show a job's state, progress and outcome.")
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--queue", "-q", default="default", metavar="Q", help="the job's queue (default: default)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    client = connect(load_settings(args))
    try:
        status = client.status(args.job_id, args.queue)
    finally:
        client.close()
    if status is None:
        raise CliError(f"job {args.job_id} not found in queue {args.queue!r} (it may have been removed by retention)")
    if args.json:
        print_json(status.to_dict())
    else:
        print(render(status))
    return 0


def render(status: JobStatus) -> str:
    """A short human-readable summary, one field a line, every value escaped for the terminal."""
    fields: list[tuple[str, Any]] = [
        ("job", status.id),
        ("task", status.task),
        ("queue", status.queue),
        ("state", status.state.value),
        ("attempts", status.attempts),
        ("priority", status.priority),
    ]
    if status.stalls:
        fields.append(("stalls", status.stalls))
    if status.progress is not None:
        fields.append(("progress", _text(status.progress)))
    if status.result is not None or status.state is JobState.COMPLETED:
        fields.append(("result", _text(status.result)))
    if status.error:
        fields.append(("error", f"{status.error.get('type', 'Error')}: {status.error.get('message', '')}"))
    for name, when in (
        ("created", status.created_at),
        ("due", status.due_at),
        ("started", status.started_at),
        ("finished", status.finished_at),
    ):
        if when is not None:
            fields.append((name, _time(when)))
    if status.worker:
        fields.append(("worker", status.worker))
    lines = [f"{name + ':':<10} {escape(value)}" for name, value in fields]
    if status.logs:
        lines.append("logs:")
        lines.extend(f"  {escape(line)}" for line in status.logs)
    return "\n".join(lines)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _time(when: datetime) -> str:
    return when.astimezone().isoformat(sep=" ", timespec="milliseconds")
