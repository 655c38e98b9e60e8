"""How a job's outcome is written: JSON for results and errors, and the timeout error."""

from __future__ import annotations

import json
import traceback
from typing import Any

from ..errors import RemoteError
from ..job import MAX_JSON_DEPTH, json_too_deep


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
