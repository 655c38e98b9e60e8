"""Typed errors. Each says what went wrong and what to do next."""

from __future__ import annotations

import math
from typing import Any

#: The longest delay anything may ask for, in seconds: ten years. It is checked where a delay enters (a job's
#: ``delay`` and ``run_at``, ``Retry(delay=...)``, ``SlowDown(delay)``, so a deferral too), and a longer one is
#: refused there, never shortened later; the worker caps only what it computes itself (a task's backoff) to it.
#: Ten years: past any schedule a queue is for, yet far inside what a due time in milliseconds can hold.
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600


def check_delay_seconds(what: str, delay: object) -> None:
    """Refuse a ``delay`` that is not a finite number of seconds from 0 to :data:`MAX_DELAY_SECONDS` (ValueError)."""
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        delay_ok = False
    else:
        delay_ok = 0 <= delay <= MAX_DELAY_SECONDS
    if not delay_ok:
        raise ValueError(f"{what} must be a number of seconds from 0 to {MAX_DELAY_SECONDS} (ten years), not {delay!r}")


class TaskmeshError(Exception):
    """Base class of every error taskmesh raises."""


class ConfigurationError(TaskmeshError):
    """Settings, tasks or plugins are inconsistent; raised at start-up."""


class DuplicateTaskError(ConfigurationError):
    """Two tasks were registered under one name."""


class UnknownTaskError(TaskmeshError):
    """A job names a task that is not registered in this process."""


class PayloadError(TaskmeshError, ValueError):
    """A payload is too large, or a stored payload cannot be decoded."""


class RedisUnavailable(TaskmeshError):
    """Redis could not be reached at the configured URL."""


class RedisFull(RedisUnavailable):
    """Redis is out of memory (``maxmemory`` reached, policy ``noeviction``) and refuses new jobs.

    Nothing was written. Free memory (keep fewer finished jobs: ``completed_keep``, ``failed_keep``), raise
    ``maxmemory``, or try again later. Workers stop leasing meanwhile, but still record what running jobs report.
    """


class CorruptRecord(TaskmeshError, ValueError):
    """A job's record in Redis cannot be read (written by something other than taskmesh's scripts).

    The scripts fail such a job, with the reason in its error, the first time they meet it.
    """


class JobNotFound(TaskmeshError, LookupError):
    """No job with this id exists (it may have been removed by retention)."""


class JobTimeout(TaskmeshError, TimeoutError):
    """Waiting for a job's result took longer than the given timeout."""


class JobFailed(TaskmeshError):
    """The job ended in ``failed`` or ``cancelled``; ``error`` holds type, message and traceback."""

    def __init__(self, job_id: str, state: str, error: dict[str, Any] | None) -> None:
        self.job_id = job_id
        self.state = state
        self.error = error or {}
        detail = f"{self.error.get('type', 'Error')}: {self.error.get('message', '')}"
        super().__init__(f"job {job_id} {state}: {detail}")


class LeaseLost(TaskmeshError):
    """This worker no longer holds the job: another holder took it over after the lease expired."""


class Retry(Exception):
    """Raise from a task to ask for another attempt after ``delay`` seconds.

    The attempt counts towards the task's ``retries``; when none are left the
    job fails with this error.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None:
            check_delay_seconds("Retry delay", delay)
        self.delay = delay
        super().__init__(reason)


class Unrecoverable(Exception):
    """Raise from a task to fail the job at once, without retrying."""


class SlowDown(Exception):
    """Raise from a task when a downstream service asks it to back off: the job runs again after
    ``delay`` seconds, and this attempt is not counted against its ``retries``."""

    def __init__(self, delay: float, reason: str = "the downstream asked to slow down") -> None:
        check_delay_seconds("SlowDown delay", delay)
        self.delay = delay
        super().__init__(reason)


class Cancelled(Exception):
    """Raised by :meth:`Job.check_cancelled` once the job's cancellation was requested."""


class RemoteError(TaskmeshError):
    """An exception a task raised in another process, carried back as its type name, message and
    traceback text (the job's error records those, not this class's)."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class TaskCrashed(TaskmeshError):
    """The process running a task ended without an outcome: killed by a signal, or it exited.

    The attempt fails and is retried by the task's policy; the worker goes on.
    """
