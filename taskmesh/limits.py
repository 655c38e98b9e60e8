"""Flow control shared by every worker of a queue: rate limits and caps on active jobs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: The most starts a rate limit may allow per window (Redis keeps one entry per start in the window).
MAX_RATE = 100_000
MAX_PER_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rate`` job starts in any ``per`` seconds, and at most ``max_active`` jobs active at once.

    Enforced in Redis for every worker together. Either part may be None (no such limit).
    ``Limit.parse("100/m")`` reads the rate from text: ``N/s``, ``N/m``, ``N/h``, ``N/d``, ``N/10s``, ``N/500ms``.
    """

    rate: int | None = None
    per: float = 1.0
    max_active: int | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and not (_whole(self.rate) and 1 <= self.rate <= MAX_RATE):
            raise ValueError(f"rate must be a whole number from 1 to {MAX_RATE}, not {self.rate!r}")
        per_ok = isinstance(self.per, (int, float)) and not isinstance(self.per, bool) and math.isfinite(self.per)
        if not (per_ok and 0.001 <= self.per <= MAX_PER_SECONDS):
            raise ValueError(f"per must be from 0.001 to {MAX_PER_SECONDS:g} seconds, not {self.per!r}")
        if self.max_active is not None and not (_whole(self.max_active) and self.max_active >= 1):
            raise ValueError(f"max_active must be a whole number >= 1, not {self.max_active!r}")
        if self.rate is None and self.max_active is None:
            raise ValueError("a limit needs a rate, a max_active, or both")

    @classmethod
    def parse(cls, rate: str, *, max_active: int | None = None) -> Limit:
        """``"100/m"`` -> at most 100 starts in any minute."""
        match = _RATE_RE.fullmatch(rate) if isinstance(rate, str) else None
        if match is None:
            raise ValueError(f"invalid rate {rate!r}: write N/s, N/m, N/h, N/d, N/10s or N/500ms")
        count, number, unit = match.groups()
        if number == ".":
            raise ValueError(f"invalid rate {rate!r}: write N/s, N/m, N/h, N/d, N/10s or N/500ms")
        per = (float(number) if number else 1.0) * _UNITS[unit or "s"]
        return cls(rate=int(count), per=per, max_active=max_active)

    @property
    def per_ms(self) -> int:
        """The window in whole milliseconds, rounded up (never shorter than stated)."""
        return max(1, math.ceil(round(self.per * 1000, 6)))

    def to_json(self) -> str:
        """The form the engine scripts read: ``{"rate": N, "per": ms, "max": M}``."""
        out: dict[str, int] = {}
        if self.rate is not None:
            out["rate"], out["per"] = self.rate, self.per_ms
        if self.max_active is not None:
            out["max"] = self.max_active
        return json.dumps(out, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Limit:
        """The limit stored as ``raw``, by the rule the engine scripts read it with (``read_limit`` in lib.lua):
        whole numbers (``1.0`` too), ``per`` in whole milliseconds; anything else is a ValueError."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a limit is a JSON object")
        rate, per, most = (_whole_number(data.get(name)) for name in ("rate", "per", "max"))
        if "per" in data and not _whole(per):
            raise ValueError(f"per must be a whole number of milliseconds, not {data['per']!r}")
        return cls(rate=rate if "rate" in data else None, per=(per or 1000) / 1000, max_active=most)

    def __str__(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"{self.rate}/{self.per:g}s")
        if self.max_active is not None:
            parts.append(f"max_active={self.max_active}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's flow-control settings as stored in Redis."""

    paused: bool = False
    limit: Limit | None = None
    task_limits: dict[str, Limit] = field(default_factory=dict)
    #: Stored limits that cannot be read, by task name ('' for the queue's own), with the reason. Workers
    #: do not enforce them; remove one with ``set_limit(queue, None, task=name)``. A name that is not UTF-8
    #: (here and in ``task_limits``) keeps its bytes as surrogates (``surrogateescape``).
    invalid: dict[str, str] = field(default_factory=dict)


def _whole_number(value: object) -> Any:
    """``value`` as an int if it is a whole number (an int, or a float like ``3.0``), else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_settings(meta: Mapping[str | bytes, str | bytes]) -> QueueSettings:
    """Read a queue's meta hash (see ``store/lua/lib.lua``), as text or as bytes.

    Anything may have been written there, so a limit that cannot be read is reported in
    ``QueueSettings.invalid`` rather than raised: the other settings stay readable.
    """
    fields = {_name(name): value for name, value in meta.items()}
    limits: dict[str, Limit] = {}
    invalid: dict[str, str] = {}
    for name, raw in fields.items():
        if name.startswith("limit:"):
            task = name[len("limit:") :]
            try:
                limits[task] = Limit.from_json(raw.decode() if isinstance(raw, bytes) else raw)
            except (ValueError, TypeError, AttributeError, RecursionError) as exc:
                invalid[task] = f"{_short(_text(raw))} is not a limit ({str(exc)[:100]})"
    return QueueSettings(paused="paused" in fields, limit=limits.pop("", None), task_limits=limits, invalid=invalid)


def _name(value: str | bytes) -> str:
    """A field name: one that is not UTF-8 keeps its bytes as surrogates (``surrogateescape``), as a shell
    passes it to ``taskmesh limit --task``, so ``set_limit`` finds the field again."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
