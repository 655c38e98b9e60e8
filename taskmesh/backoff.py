"""The one backoff formula: how long to wait after a failure that may pass (a task's retry, Redis out of reach,
a refused call), growing with each failure in a row. No dependencies, so every layer can use it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a retry: ``base * factor ** (attempt - 1)``, capped, minus up to ``jitter`` of it.

    taskmesh's one backoff formula: a task's retries use it, and so should any wait that grows with repeated
    failures (a worker's streak of refused calls, the event bus, a runner's API calls) rather than a formula
    of its own.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        finite = all(math.isfinite(v) for v in (self.base, self.factor, self.cap, self.jitter))
        if not finite or self.base < 0 or self.factor < 1 or self.cap < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff {self}: need base >= 0, factor >= 1, cap >= 0, 0 <= jitter <= 1")

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        return cls(base=seconds, factor=1.0, cap=seconds, jitter=0.0)

    @classmethod
    def exponential(
        cls, base: float = 1.0, *, cap: float = 300.0, jitter: float = 0.25, factor: float = 2.0
    ) -> Backoff:
        return cls(base=base, factor=factor, cap=cap, jitter=jitter)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        except OverflowError:  # a task with many retries: the growth passed the cap long ago
            raw = self.cap if self.base > 0 else 0.0
        return raw * (1 - self.jitter * random.random())
