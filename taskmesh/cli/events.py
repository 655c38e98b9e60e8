"""``taskmesh events``: follow lifecycle events live."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from ..client import Client
from ..events import Event
from .common import add_common_options, check_redis, escape, load_settings, valid_queues


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "events",
        help="follow job events live",
        description="Print lifecycle events (enqueued, active, progress, completed, failed, ...) as they happen, "
        "one a line, until Ctrl-C. Without --queue: every queue known under the prefix and the configured queues.",
    )
    parser.add_argument("--queue", "-q", action="append", dest="queues", metavar="Q", help="queue (repeatable)")
    parser.add_argument(
        "--since",
        default="$",
        metavar="ID",
        help="start after this event id; 0 replays the stream from the start (default: new events only)",
    )
    parser.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without a new event")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    check_redis(settings.redis_url)
    client = Client(settings=settings)
    try:
        queues = args.queues or valid_queues(sorted({*client.queues(), *settings.queues}))
        for event in client.events(queues, since=args.since, timeout=args.timeout):
            print(json.dumps(event.to_dict(), ensure_ascii=True) if args.json else render(event), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


def render(event: Event) -> str:
    """``time  queue  event  job  key=value ...``; the time comes from the stream id (Redis clock), or is
    the id itself if it is no time (an id given by hand, past the year 9999, say).

    Every field is escaped for the terminal: whoever can write to Redis chooses them."""
    data = " ".join(f"{escape(key)}={escape(value)}" for key, value in event.data.items())
    return f"{_when(event.id)}  {event.queue}  {escape(event.name)}  {escape(event.job_id)}  {data}".rstrip()


def _when(entry_id: str) -> str:
    """The local time of a stream entry's id (``<ms>-<seq>``), or the id if it is none."""
    try:
        millis = int(entry_id.partition("-")[0])
        return datetime.fromtimestamp(millis / 1000).isoformat(sep=" ", timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return escape(entry_id)
