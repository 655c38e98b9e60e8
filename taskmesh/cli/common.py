"""Shared CLI pieces: the options every command takes, settings, the Redis connection check, errors."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..client import Client
from ..settings import Settings
from ..store import connect as connections

#: Exit codes: 1 for a usage or library error, 2 when Redis cannot be reached.
EXIT_ERROR = 1
EXIT_UNREACHABLE = 2

CONNECTION_ERRORS = connections.UNAVAILABLE_ERRORS


class CliError(Exception):
    """An error the CLI reports as one line (``taskmesh: <message>``) with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis URL (env TASKMESH_REDIS_URL; default redis://localhost:6379/0)",
    )
    group.add_argument("--prefix", help="key prefix: one taskmesh installation per prefix (env TASKMESH_PREFIX)")


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from flags > ``TASKMESH_*`` env > ``[tool.taskmesh]`` in ./pyproject.toml > defaults.

    A flag left unset is None and falls through to the next source.
    """
    return Settings.load({"redis_url": args.redis_url, "prefix": args.prefix, **overrides})


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for an error message."""
    return connections.redact(url)


def unreachable(url: str, reason: object) -> CliError:
    return CliError(f"cannot connect to Redis at {display_url(url)}: {reason}", EXIT_UNREACHABLE)


def check_redis(url: str) -> None:
    """PING ``url`` once (bounded by the connection timeouts) so a dead server is one clear line, not a hang."""
    try:
        connections.parse(url)
    except ValueError as exc:
        raise CliError(f"invalid Redis URL {display_url(url)}: {exc}", EXIT_UNREACHABLE) from None
    try:
        conn = connections.sync_client(url)
    except CONNECTION_ERRORS as exc:  # a cluster client looks for the cluster at once
        raise unreachable(url, exc) from None
    try:
        conn.ping()
    except CONNECTION_ERRORS as exc:
        raise unreachable(url, exc) from None
    finally:
        conn.close()


def connect(settings: Settings) -> Client:
    """A client for ``settings`` whose server answered a PING."""
    check_redis(settings.redis_url)
    return Client(settings=settings)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
