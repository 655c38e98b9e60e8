"""Retrying Redis calls while Redis is unreachable, with backoff, until a stopping worker gives up."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from ..settings import Settings
from ..store.worker import UNREACHABLE_ERRORS
from ..task import Backoff

log = logging.getLogger("taskmesh.worker")
T = TypeVar("T")
#: Backoff between attempts while Redis is unreachable (capped further by ``RedisRetry._backoff``).
BACKOFF = wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.05)


class RedisRetry:
    """Calls ``fn`` (a Redis call) until it gets through. ``give_up_at`` (monotonic) is set when the worker stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.give_up_at: float | None = None

    async def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``, retrying with backoff while Redis is unreachable.

        A stopping worker gives up (the error propagates) once its grace period is over, so
        ``Worker.stop`` returns with Redis down. What it could not report (results, hand-backs) is
        lost with it: those jobs stay leased to this worker until their leases expire, then any
        worker's sweep puts them back to waiting, exactly as after a crash.
        """
        try:  # the common case, without the retry machinery's cost on the hot path
            return await fn()
        except UNREACHABLE_ERRORS as exc:
            log.warning("redis unreachable (%s); retrying with backoff", exc)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(UNREACHABLE_ERRORS),
            stop=self._giving_up,
            wait=self._backoff,
            before_sleep=lambda state: log.debug(
                "redis unreachable (%s); retrying", state.outcome.exception() if state.outcome else "?"
            ),
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    def _giving_up(self, state: RetryCallState) -> bool:
        if self.give_up_at is None or time.monotonic() < self.give_up_at:
            return False
        log.warning(
            "redis still unreachable after the grace period (%s); giving up: jobs this worker could not report "
            "go back to waiting when their leases expire",
            state.outcome.exception() if state.outcome else "?",
        )
        return True

    def _backoff(self, state: RetryCallState) -> float:
        """``BACKOFF``, at most ``renew_interval`` (once Redis is back, leases are renewed at the usual
        pace, before they expire) and never past the moment a stopping worker gives up."""
        delay = min(BACKOFF(state), self.settings.renew_interval)
        if self.give_up_at is not None:
            delay = min(delay, max(self.give_up_at - time.monotonic(), 0.0))
        return delay


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
