"""The ``taskmesh`` command line: one module per command, wired here.

Every error is one line on stderr (``taskmesh: ...``) and a non-zero exit:
1 for a usage or library error, 2 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import RedisUnavailable, TaskmeshError
from ..store import CONNECTION_ERRORS, RedisError
from . import config, control, enqueue, events, plugins, queues, run, schedules, status, tasks
from .common import EXIT_ERROR, EXIT_UNREACHABLE, CliError, EscapingFormatter, escape, load_settings, unreachable

COMMANDS = (run, enqueue, status, control, queues, schedules, tasks, plugins, config, events)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmesh",
        description="A job queue on Redis. Settings come from flags, then TASKMESH_* environment variables, "
        "then [tool.taskmesh] in the nearest pyproject.toml (`taskmesh config` shows the result).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        code: int = args.handler(args)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except RedisUnavailable as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except CONNECTION_ERRORS as exc:
        return _fail(str(unreachable(_redis_url(args), exc)), EXIT_UNREACHABLE)
    except BrokenPipeError:
        # The reader went away (``taskmesh events | head``): not an error worth a line.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (TaskmeshError, ValueError, TypeError, OSError, RedisError) as exc:
        return _fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        return 130
    return code


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"taskmesh: {escape(first)}", file=sys.stderr)
    return code


def _redis_url(args: argparse.Namespace) -> str:
    try:
        return load_settings(args).redis_url
    except (TaskmeshError, ValueError):
        return str(args.redis_url)


__all__ = ["build_parser", "main"]
