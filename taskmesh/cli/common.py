"""Shared CLI pieces: the options every command takes, settings, the Redis connection check, errors."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any

from ..client import Client
from ..names import INVISIBLE_RE, NAME_RE
from ..settings import ResolvedSettings, Settings, resolve_settings
from ..store import QueueStore
from ..store import connect as connections
from ..urls import redact

#: Exit codes: 1 for a usage or library error, 2 when Redis cannot be reached.
EXIT_ERROR = 1
EXIT_UNREACHABLE = 2

CONNECTION_ERRORS = connections.UNAVAILABLE_ERRORS
# What a terminal acts on, what reorders the text around it or what shows as nothing: controls (C0, C1,
# DEL), format characters (bidi marks, embeddings, overrides and isolates, zero-width spaces and joiners,
# tags), private use, surrogates (bytes that were not UTF-8), unassigned code points, line and paragraph
# separators, and the other default-ignorable characters (fillers, variation selectors).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
_ASCII_CONTROLS = re.compile("[\x00-\x1f\x7f]")
_NON_ASCII = re.compile("[^\x00-\x7f]+")
_SHELL_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")


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


#: The command-line flag a setting comes from, where it is not ``--<setting with dashes>``.
FLAGS = {"modules": "MODULE", "queues": "--queue", "scheduler": "--no-scheduler"}


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from flags > ``TASKMESH_*`` env > ``[tool.taskmesh]`` in the nearest pyproject.toml > defaults.

    A flag left unset is None and falls through to the next source.
    """
    return resolve(args, **overrides).settings


def resolve(args: argparse.Namespace, **overrides: Any) -> ResolvedSettings:
    """:func:`load_settings`, with where each value came from."""
    values = {"redis_url": args.redis_url, "prefix": args.prefix, **overrides}
    flags = {name: FLAGS.get(name, "--" + name.replace("_", "-")) for name in values}
    return resolve_settings(values, flags=flags)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for an error message."""
    return redact(url)


def unreachable(url: str, reason: object) -> CliError:
    return CliError(f"cannot connect to Redis at {display_url(url)}: {reason}", EXIT_UNREACHABLE)


def check_redis(url: str) -> None:
    """PING ``url`` once (bounded by the connection timeouts) so a dead server is one clear line, not a hang."""
    try:
        connections.parse(url)
    except ValueError as exc:
        raise CliError(f"invalid Redis URL {display_url(url)}: {exc}", EXIT_UNREACHABLE) from None
    store = QueueStore(Settings(redis_url=url))
    try:
        store.ping()  # a cluster client looks for the cluster as it is made, here
    except CONNECTION_ERRORS as exc:
        raise unreachable(url, exc) from None
    finally:
        store.close()


def connect(settings: Settings) -> Client:
    """A client for ``settings`` whose server answered a PING."""
    check_redis(settings.redis_url)
    return Client(settings=settings)


def escape(value: object) -> str:
    r"""``str(value)`` fit for a terminal: the characters it would act on written as escapes (``\x1b``,
    ``\u202e``, ``\n``). Everything read from Redis (job ids, task names, errors, events) goes through it."""
    text = _ASCII_CONTROLS.sub(_escaped, str(value))
    return text if text.isascii() else _NON_ASCII.sub(_escaped_unsafe, text)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _escaped_unsafe(match: re.Match[str]) -> str:
    """A run of non-ASCII characters with the unsafe ones escaped."""
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _UNSAFE_CATEGORIES or INVISIBLE_RE.match(char)
        else char
        for char in match.group()
    )


def shell_word(value: str) -> str | None:
    r"""``value`` as one word to paste into bash or zsh: as it is if it is plain, in single quotes if it
    is printable ASCII, else in ``$'...'`` with every other byte as ``\xNN`` (a name that is not UTF-8
    holds its bytes as surrogates, see ``surrogateescape``). Printable ASCII, safe for a terminal. None if
    no shell can pass it (a NUL byte)."""
    if _SHELL_PLAIN.fullmatch(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        return None
    if all(0x20 <= byte < 0x7F for byte in data):
        return shlex.quote(value)
    return "$'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"'\\" else f"\\x{b:02x}" for b in data) + "'"


class EscapingFormatter(logging.Formatter):
    """A log formatter that passes each line through :func:`escape`: log messages quote job ids, task names
    and errors, which anyone who can write to Redis chooses."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(escape(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(escape(line) for line in super().formatStack(stack_info).split("\n"))


def valid_queues(names: Iterable[str]) -> list[str]:
    """``names`` without those that are no queue name (the set of queues in Redis may hold anything),
    each left out with a line on stderr."""
    valid = []
    for name in names:
        if NAME_RE.fullmatch(name):
            valid.append(name)
        else:
            print(f"taskmesh: ignoring {escape(repr(name))} in the set of queues: not a queue name", file=sys.stderr)
    return valid


def print_json(value: Any) -> None:
    """``value`` as JSON; ``ensure_ascii`` escapes every control and non-ASCII character in it."""
    json.dump(value, sys.stdout, indent=2, default=str, ensure_ascii=True)
    sys.stdout.write("\n")


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, each cell through :func:`escape`."""
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
