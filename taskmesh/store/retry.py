"""Retrying calls to the store while Redis is out of reach, with backoff, until a stopping worker gives up.

The worker's calls and an out-of-process runner's (the Kubernetes runner) wait out an outage the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from ..backoff import Backoff
from ..settings import Settings
from .worker import UNREACHABLE_ERRORS

log = logging.getLogger("taskmesh.worker")
T = TypeVar("T")
#: Backoff between attempts while Redis is unreachable (capped further by ``RedisRetry._backoff``).
BACKOFF = Backoff.exponential(0.05, cap=5.0, jitter=0.25)


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
        delay = min(BACKOFF.delay(state.attempt_number), self.settings.renew_interval)
        if self.give_up_at is not None:
            delay = min(delay, max(self.give_up_at - time.monotonic(), 0.0))
        return delay
