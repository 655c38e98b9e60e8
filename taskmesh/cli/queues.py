"""``taskmesh queues``: jobs per state in every queue, and the live workers."""

from __future__ import annotations

import argparse

from ..client import STATES
from .common import add_common_options, connect, escape, load_settings, print_json, table, valid_queues


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "queues",
        help="jobs per state in every queue, and live workers",
        description="Count jobs per state in every queue under the prefix and list the workers whose "
        "heartbeat is current.",
    )
    parser.add_argument("--json", action="store_true", help="print counts and workers as JSON")
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    client = connect(settings)
    try:
        names = valid_queues(client.queues())
        counts = {queue: client.counts(queue) for queue in names}
        flow_settings = {queue: client.queue_settings(queue) for queue in names}
        workers = client.workers()
    finally:
        client.close()
    if args.json:
        flow = {
            queue: {
                "paused": s.paused,
                "limit": str(s.limit) if s.limit else None,
                "task_limits": {t: str(limit) for t, limit in s.task_limits.items()},
                "invalid_limits": s.invalid,
            }
            for queue, s in flow_settings.items()
        }
        print_json({"queues": counts, "settings": flow, "workers": workers})
        return 0
    if counts:
        rows = [["QUEUE", *(state.upper() for state in STATES)]]
        rows += [[queue, *(str(n[state]) for state in STATES)] for queue, n in counts.items()]
        print(table(rows))
        for queue, s in flow_settings.items():
            notes = (["paused"] if s.paused else []) + ([f"limit {s.limit}"] if s.limit else [])
            notes += [f"task {escape(t)}: {limit}" for t, limit in sorted(s.task_limits.items())]
            notes += [
                f"{f'task {escape(t)}' if t else 'queue'}: invalid limit (taskmesh limit {queue})" for t in s.invalid
            ]
            if notes:
                print(f"{queue}: {'; '.join(notes)}")
    else:
        print(f"no queues under prefix {settings.prefix!r}")
    print(f"\n{len(workers)} live worker(s)" + (":" if workers else ""))
    for worker in workers:
        print(f"  {escape(worker)}")
    return 0
