"""Write the sync methods of ``taskmesh.client.Client`` from its async ones, as httpcore writes its sync code.

    .venv/bin/python tests/unasync.py           rewrite the sync block of taskmesh/client.py
    .venv/bin/python tests/unasync.py --check   exit 1 (and say so) if the block is not what it would write

In ``taskmesh/client.py`` the block under ``SOURCE`` (up to ``END``) holds the async methods; the block under
``SYNC`` (up to ``SOURCE``) is their translation by the fixed replacements in ``RULES``, applied in order,
and nothing else. ``tests/test_client_twins.py`` runs :func:`generate` and fails when the file differs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "taskmesh" / "client.py"
SYNC = "    # -- sync: written by tests/unasync.py from the async methods below; do not edit by hand "
SOURCE = "    # -- async: the source of the sync methods above (edit here, then run tests/unasync.py) "
END = "    # -- end of the async source "

#: An async method's name: ``aname`` or ``_aname`` (``await_job`` too); its sync twin drops the ``a``.
ASYNC_NAME = re.compile(r"async def (_?)a(\w+)\(")
RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bself\.astore\b"), "self.store"),
    (re.compile(r"\bconnect\.aguard"), "connect.guard"),
    (re.compile(r"\bAsyncIterator\b"), "Iterator"),
    (re.compile(r"\bAsyncIterable\b"), "Iterable"),
    (re.compile(r"\basync (def|for|with) "), r"\1 "),
    (re.compile(r"\bawait "), ""),
]


def unasync(source: str) -> str:
    """The sync twin of a block of async methods: each method defined in it is renamed wherever it is
    named (calls and docstrings), then ``RULES`` apply."""
    for underscore, rest in ASYNC_NAME.findall(source):
        source = re.sub(rf"\b{underscore}a{rest}\b", f"{underscore}{rest}", source)
    for pattern, replacement in RULES:
        source = pattern.sub(replacement, source)
    return source


def blocks(text: str) -> tuple[int, int, int]:
    """Character offsets of the line after the SYNC marker, of the SOURCE marker and of the END marker."""
    sync, source, end = (text.find(f"\n{marker}") for marker in (SYNC, SOURCE, END))
    if not 0 <= sync < source < end:
        raise SystemExit(f"{CLIENT}: the markers SYNC, SOURCE and END must appear once each, in that order")
    return text.index("\n", sync + 1) + 1, source + 1, end + 1


def generate(text: str) -> str:
    """The file ``text`` with its sync block written from its async block."""
    sync, source, end = blocks(text)
    body = text[text.index("\n", source) + 1 : end]
    return text[:sync] + unasync(body) + text[source:]


def main(argv: list[str]) -> int:
    text = CLIENT.read_text()
    wanted = generate(text)
    if "--check" in argv:
        if wanted != text:
            print(f"{CLIENT} is out of date: run `.venv/bin/python tests/unasync.py`", file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        CLIENT.write_text(wanted)
        print(f"rewrote the sync methods of {CLIENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
