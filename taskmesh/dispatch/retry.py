"""A streak of failures the worker waits out with backoff, logging once per streak (Redis calls retried while
Redis is unreachable: :class:`taskmesh.store.retry.RedisRetry`)."""

from __future__ import annotations

import logging
import time

from ..backoff import Backoff
from ..store.retry import RedisRetry

__all__ = ["RedisRetry", "Streak"]

log = logging.getLogger("taskmesh.worker")


class Streak:
    """A failure that repeats (a script Redis refuses, Redis out of memory): the caller waits longer after
    each one, and the log says so once when the streak starts, every ``REMIND`` seconds while it lasts,
    and once when it ends, instead of once per attempt.
    """

    REMIND = 60.0

    def __init__(self, what: str, backoff: Backoff | None = None) -> None:
        self.what = what
        self.backoff = backoff or Backoff.exponential(0.05, cap=5.0, jitter=0.25)
        self.failures = 0
        #: ``time.monotonic()`` before which the caller should not try again.
        self.until = 0.0
        self._logged = 0.0

    def failed(self, reason: object, level: int = logging.ERROR) -> float:
        """Count a failure; returns the seconds to wait before the next try."""
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1 or now - self._logged >= self.REMIND:
            self._logged = now
            log.log(level, "%s: %s (failure %d; retrying with backoff)", self.what, reason, self.failures)
        delay = self.backoff.delay(self.failures)
        self.until = now + delay
        return delay

    def ok(self) -> None:
        """The thing worked: the streak, if any, is over."""
        if self.failures:
            log.warning("%s: working again after %d failure(s)", self.what, self.failures)
        self.failures = 0
        self.until = 0.0

    @property
    def waiting(self) -> bool:
        return self.until > 0.0 and self.until > time.monotonic()  # no clock read outside a streak
