"""``taskmesh run``: start a worker for the discovered tasks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

from ..dispatch import Worker, WorkerStats
from ..registry import Registry
from ..settings import Settings
from .common import CliError, add_common_options, check_redis, resolve

log = logging.getLogger("taskmesh.cli")

HELP = """\
Start a worker. Tasks come from the named modules (imported with the current directory on sys.path) or,
when none is named, from the `modules` setting, else from every `taskmesh.tasks` entry point.

Queues: --queue, else TASKMESH_QUEUES, else `queues` in [tool.taskmesh] of the nearest pyproject.toml,
else the queues of the discovered tasks.

SIGTERM or SIGINT stops leasing and lets running jobs finish within the grace period (TASKMESH_GRACE_PERIOD);
jobs still running then are handed back to the queue without spending an attempt, and the worker exits 0.
A second signal exits at once (running jobs are recovered when their leases expire).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run", help="start a worker", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="task modules to import")
    parser.add_argument(
        "--queue",
        "-q",
        action="append",
        dest="queues",
        metavar="Q",
        help="queue to lease from (repeat for several, in order of preference)",
    )
    parser.add_argument("--concurrency", "-c", type=int, metavar="N", help="jobs run at once (default 10)")
    parser.add_argument("--burst", action="store_true", help="run every job that is due, then exit 0")
    parser.add_argument(
        "--no-scheduler",
        dest="scheduler",
        action="store_false",
        default=None,
        help="do not fire schedules in this worker (others still do; TASKMESH_SCHEDULER=false)",
    )
    parser.add_argument(
        "--prune-schedules",
        action="store_true",
        default=None,
        help="remove stored schedules declared in code that no task here declares any more",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO"
    )
    add_common_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    logging.getLogger("taskmesh").setLevel(args.log_level)
    resolved = resolve(
        args,
        modules=tuple(args.modules) or None,
        queues=tuple(args.queues) if args.queues else None,
        concurrency=args.concurrency,
        scheduler=args.scheduler,
        prune_schedules=args.prune_schedules,
    )
    settings = resolved.settings
    registry = Registry.discover(settings.modules)
    if not len(registry):
        where = ", ".join(settings.modules) if settings.modules else "the taskmesh.tasks entry points"
        raise CliError(f"no tasks found in {where}; name the modules that define them: taskmesh run myapp.tasks")
    if resolved.origins["queues"].kind == "default":
        settings = settings.replace(queues=tuple(registry.queues))
    worker = Worker.create(registry, settings, burst=args.burst)  # plugin and runner mistakes before Redis ones
    check_redis(settings.redis_url)
    log.info(
        "worker %s starting: queues %s; concurrency %d%s; %d task(s): %s",
        worker.id,
        ",".join(settings.queues),
        settings.concurrency,
        " (burst)" if args.burst else "",
        len(registry),
        ", ".join(task.name for task in registry),
    )
    stats = asyncio.run(_serve(worker, settings))
    log.info(
        "worker %s stopped: %d completed, %d failed, %d retried, %d handed back",
        worker.id,
        stats.completed,
        stats.failed,
        stats.retried,
        stats.released,
    )
    _exit_if_threads_linger(0)
    return 0


async def _serve(worker: Worker, settings: Settings) -> WorkerStats:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.info(
                "%s: stopping; running jobs get %gs to finish, then are handed back (send again to exit now)",
                name,
                settings.grace_period,
            )
            worker.stop()
        else:
            log.warning("%s again: exiting now; running jobs go back to waiting when their leases expire", name)
            _flush_and_exit(128 + signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await worker.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _exit_if_threads_linger(code: int) -> None:
    """Exit now if a handed-back sync task still runs in a thread: Python would otherwise wait for it at exit.

    Its job is already back in the queue; a thread cannot be killed, so the process ends without it.
    """
    deadline = time.monotonic() + 0.5  # idle pool threads are exiting on their own; give them a moment
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in lingering:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in lingering if t.is_alive()]
    if lingering:
        log.warning("%d task thread(s) still running after hand-back; exiting without waiting", len(lingering))
        _flush_and_exit(code)


def _flush_and_exit(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
