"""``taskmesh cancel``, ``pause``, ``resume`` and ``limit``: change jobs and queues while workers run."""

from __future__ import annotations

import argparse

from ..limits import Limit
from .common import CliError, add_common_options, connect, escape, load_settings, shell_word


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: a waiting or delayed job at once; a running one is stopped by its worker "
        "within its lease renewal interval. Prints the job's state afterwards.",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--queue", "-q", default="default", metavar="Q", help="the job's queue (default: default)")
    add_common_options(cancel)
    cancel.set_defaults(handler=cancel_command)

    for name, text in (("pause", "stop leasing from a queue (enqueue still works)"), ("resume", "undo pause")):
        parser = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument("queue", metavar="QUEUE")
        add_common_options(parser)
        parser.set_defaults(handler=pause_command, resume=name == "resume")

    limit = sub.add_parser(
        "limit",
        help="set or clear a queue's or a task's limits",
        description="Limit job starts (--rate N/s, N/m, N/h, N/10s ...) and jobs active at once (--max-active) "
        "in a queue, or for one task in it (--task), for every worker. Without limits: show them. A stored limit "
        "that cannot be read is shown as invalid (workers ignore it); --clear removes it.",
    )
    limit.add_argument("queue", metavar="QUEUE")
    limit.add_argument("--task", metavar="NAME", help="limit this task's jobs in the queue")
    limit.add_argument("--rate", metavar="N/PER", help="at most N starts per period, e.g. 100/m")
    limit.add_argument("--max-active", type=int, metavar="N", help="at most N jobs active at once")
    limit.add_argument("--clear", action="store_true", help="remove the limit")
    add_common_options(limit)
    limit.set_defaults(handler=limit_command)


def cancel_command(args: argparse.Namespace) -> int:
    client = connect(load_settings(args))
    try:
        print(escape(client.cancel(args.job_id, args.queue)))
    finally:
        client.close()
    return 0


def pause_command(args: argparse.Namespace) -> int:
    client = connect(load_settings(args))
    try:
        if args.resume:
            client.resume(args.queue)
        else:
            client.pause(args.queue)
        print(f"{args.queue}: {'resumed' if args.resume else 'paused'}")
    finally:
        client.close()
    return 0


def limit_command(args: argparse.Namespace) -> int:
    setting = args.rate is not None or args.max_active is not None
    if args.clear and setting:
        raise CliError("give --clear or limits (--rate, --max-active), not both")
    client = connect(load_settings(args))
    try:
        if args.clear:
            client.set_limit(args.queue, None, task=args.task)
        elif setting:
            if args.rate is not None:
                limit = Limit.parse(args.rate, max_active=args.max_active)
            else:
                limit = Limit(max_active=args.max_active)
            client.set_limit(args.queue, limit, task=args.task)
        settings = client.queue_settings(args.queue)
    finally:
        client.close()
    print(f"{args.queue}: {'paused' if settings.paused else 'running'}; queue limit: {settings.limit or 'none'}")
    for name, task_limit in sorted(settings.task_limits.items()):
        print(f"  task {escape(name)}: {task_limit}")
    for name, reason in sorted(settings.invalid.items()):
        where = f"task {escape(name)}" if name else "queue"
        print(f"  {where}: invalid stored limit, ignored by workers: {escape(reason)}; remove it: {_clear(args, name)}")
    return 0


def _clear(args: argparse.Namespace, task: str) -> str:
    """The command that removes the limit of ``task`` ('' for the queue's own), to paste into a shell."""
    if not task:
        return f"taskmesh limit {args.queue} --clear"
    word = shell_word(task)
    if word is None:
        return f"client.set_limit({args.queue!r}, None, task=...) with the name's bytes (no shell passes a NUL byte)"
    return f"taskmesh limit {args.queue} --task{'=' if word.startswith('-') else ' '}{word} --clear"
