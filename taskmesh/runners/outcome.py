"""How a job's outcome is written: JSON for results and errors, the timeout error, and :func:`classify`, which
turns an attempt's outcome into the update the worker sends (a pure function: any runner, local or remote,
reaches the same decision from the same outcome)."""

from __future__ import annotations

import asyncio
import json
import math
import traceback
from typing import TYPE_CHECKING, Any, Literal

from ..errors import MAX_DELAY_SECONDS, Cancelled, RemoteError, Retry, SlowDown, Unrecoverable
from ..job import MAX_JSON_DEPTH, json_too_deep
from ..store.scripts import Update

if TYPE_CHECKING:
    from ..job import Job
    from ..task import Task

#: Why the worker cancelled a run: its cancellation was requested, or the worker hands the job back (stopping).
Stop = Literal["cancel", "hand-back"]


class JobTimeoutError(TimeoutError):
    """The task ran past its ``timeout``."""


def result_json(result: Any) -> str:
    """The task's result as JSON; anything JSON cannot hold (NaN included) is a TypeError, and so is a
    result nested deeper than :data:`~taskmesh.job.MAX_JSON_DEPTH` (its readers could not decode it)."""
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the task's result is not JSON-serializable: {exc}") from None
    except RecursionError:
        text = "[" * (MAX_JSON_DEPTH + 1)
    if json_too_deep(text):
        raise TypeError(f"the task's result is nested deeper than {MAX_JSON_DEPTH} levels")
    return text


def error_json(exc: BaseException, tb: bool = True) -> str:
    """``{"type", "message", "traceback"}``, even for an exception whose ``str()`` fails.

    An error raised in another process (:class:`RemoteError`, itself or as the cause) is recorded as it was there.
    """
    remote = exc if isinstance(exc, RemoteError) else exc.__cause__
    if isinstance(remote, RemoteError):
        text = remote.traceback if tb else ""
        return json.dumps({"type": remote.type_name, "message": remote.message, "traceback": text})
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        text = "".join(traceback.format_exception(exc)) if tb else ""
    except Exception:
        text = ""
    return json.dumps({"type": type(exc).__name__, "message": message, "traceback": text})


def classify(
    task: Task[Any, Any], job: Job, error: BaseException | None, result: Any = None, *, stop: Stop | None = None
) -> Update:
    """The update that records one attempt of ``job``: ``error`` is what the attempt raised (None: it returned
    ``result``), ``stop`` why the worker cancelled it, if it did. Pure (no I/O): the same outcome makes the same
    update, but for the jitter of a backoff.

    - a result: ``c`` (complete) with its JSON; a result JSON cannot hold fails the attempt (a TypeError)
    - ``Cancelled``, or a run cancelled on request: ``x`` (cancelled)
    - a run cancelled to hand it back: ``r`` (released, its attempt unspent)
    - ``SlowDown``: ``d`` (deferred by its delay, its attempt unspent)
    - ``Unrecoverable``: ``f`` with no retry (delay -1)
    - ``Retry``: ``f``, retried after its delay (the task's backoff if it has none) while retries are left
    - anything else (a timeout, ``CancelledError`` the task raised itself): ``f``, retried after the backoff
    """
    if error is None:
        try:
            return Update("c", job.id, job.token, result_json(result))
        except TypeError as exc:
            error = exc
    if isinstance(error, asyncio.CancelledError) and stop is not None:
        return Update("x" if stop == "cancel" else "r", job.id, job.token)
    if isinstance(error, Cancelled):
        return Update("x", job.id, job.token)
    if isinstance(error, SlowDown):
        return Update("d", job.id, job.token, error_json(error, tb=False), int(error.delay * 1000))
    if isinstance(error, Unrecoverable):
        return Update("f", job.id, job.token, error_json(error), -1)
    if isinstance(error, Retry) and error.delay is not None:
        return failure(task, job, error, error.delay)
    return failure(task, job, error, task.backoff.delay(job.attempt))


def failure(task: Task[Any, Any], job: Job, error: BaseException, delay: float) -> Update:
    """``f``: retried after ``delay`` seconds while the task has retries left, else failed for good (delay -1).

    The step script makes the same decision; a final failure says so with delay -1 (counted apart in stats).
    A delay asked for (``Retry``) is at most ``MAX_DELAY_SECONDS`` already; a backoff is capped to it here.
    """
    delay = min(max(delay, 0.0), MAX_DELAY_SECONDS) if math.isfinite(delay) else MAX_DELAY_SECONDS
    delay_ms = int(delay * 1000) if job.attempt <= task.retries else -1
    return Update("f", job.id, job.token, error_json(error), delay_ms, task.retries + 1)


def unrunnable(job: Job, error: BaseException) -> Update:
    """``f`` with no retry, for a job no attempt can run (its payload cannot be read, or its task is unknown)."""
    return Update("f", job.id, job.token, error_json(error, tb=False), -1)
