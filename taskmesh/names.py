"""The rules for names and job ids: queue, task and prefix names, and the ids producers may give jobs.

Everything that takes a name from outside (the client, the CLI, settings, Redis key building) checks it here.
"""

from __future__ import annotations

import re
import unicodedata

NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
#: A job id in plain ASCII: 1-200 printable characters without spaces, ``{`` or ``}``. The fast path of
#: :func:`check_job_id`, which also takes printable non-ASCII characters (use it to check an id).
JOB_ID_RE = re.compile(r"[!-z|~]{1,200}")
MAX_JOB_ID = 200
_ASCII_ID_RUNS = re.compile(r"[!-z|~]+")
#: What shows as nothing, or as a blank, though its category is neither C nor Z: the Unicode
#: Default_Ignorable_Code_Point characters (DerivedCoreProperties.txt: soft hyphen, fillers, joiners,
#: variation selectors, invisible operators, tags; the C ones among them too), and symbols that look blank
#: (U+2800 BRAILLE PATTERN BLANK, U+1D159 MUSICAL SYMBOL NULL NOTEHEAD, U+16FE4 KHITAN SMALL SCRIPT FILLER).
INVISIBLE_RE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
    "\u2800\U0001d159\U00016fe4]"
)
#: The ids the schedules' jobs get (``<schedule name>@<tick ms>``, see ``lua/cron.lua``): no producer may take one.
SCHEDULE_JOB_ID_RE = re.compile(NAME_RE.pattern + r"@[0-9]+")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid queue, task or prefix name, else raise ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} {value!r}: use 1-100 characters from letters, digits and _ . : -")
    return value


def check_job_id(value: str) -> str:
    """Return ``value`` if it is a valid job id, else raise ValueError (TypeError if it is not a string).

    Printable means no character of the Unicode categories C (controls, format characters such as bidi
    overrides, private use, surrogates, unassigned) or Z (spaces of any kind, line and paragraph
    separators), and none of :data:`INVISIBLE_RE` (fillers, variation selectors, a blank braille cell):
    an id reads the same wherever it is shown.
    """
    if isinstance(value, str) and JOB_ID_RE.fullmatch(value):  # the common case first: enqueue is hot
        return value
    if not isinstance(value, str):
        raise TypeError(f"a job id must be a string, not {type(value).__name__}")
    if not value.isascii() and _printable(value):
        return value
    raise ValueError(f"invalid job id {_shown(value)}: use 1-200 printable characters without spaces, '{{' or '}}'")


def check_new_job_id(value: str) -> str:
    """:func:`check_job_id` for the id a producer gives a new job: the ids of schedules' jobs are reserved."""
    if isinstance(value, str) and "@" not in value and JOB_ID_RE.fullmatch(value):
        return value
    check_job_id(value)
    if SCHEDULE_JOB_ID_RE.fullmatch(value):
        raise ValueError(
            f"job id {value!r} is reserved: <name>@<digits> is the id of a schedule's job (one per tick); "
            "give an id of another form (e.g. without '@')"
        )
    return value


def _printable(value: str) -> bool:
    """Whether ``value`` (not all ASCII) is a job id: the slow path of :func:`check_job_id`."""
    if not 0 < len(value) <= MAX_JOB_ID:
        return False
    others = _ASCII_ID_RUNS.sub("", value)  # what the ASCII rule does not take: each must be printable non-ASCII
    if INVISIBLE_RE.search(others):
        return False
    return all(not char.isascii() and unicodedata.category(char)[0] not in "CZ" for char in others)


def _shown(value: str, limit: int = 60) -> str:
    """``value``'s repr (which escapes unprintable characters), cut short for an error message."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
