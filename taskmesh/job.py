"""Jobs: the running-job context (``Job``), descriptions (``Call``), status and handles."""

from __future__ import annotations

import enum
import itertools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import Cancelled, CorruptRecord, JobNotFound, LeaseLost, PayloadError

if TYPE_CHECKING:
    from .client import Client

R = TypeVar("R")


class JobState(enum.StrEnum):
    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class Call:
    """One job to enqueue: a task name, its JSON arguments and enqueue options.

    Its shape is checked here, where the mistake is made: ``args`` a list or tuple (a string would become
    one argument per character), ``kwargs`` a mapping with string keys (``1`` and ``"1"`` would become
    one), not both ``delay`` and ``run_at``. The values are checked when the call is enqueued.
    """

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    job_id: str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.args, (list, tuple)):
            kind = type(self.args).__name__
            raise TypeError(f"Call {self.task}: args must be a list or tuple, not {kind} (one argument: args=[value])")
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"Call {self.task}: kwargs must be a mapping, not {type(self.kwargs).__name__}")
        for key in self.kwargs:
            if not isinstance(key, str):
                kind = type(key).__name__
                raise TypeError(f"Call {self.task}: keyword argument names must be strings, not {kind} {key!r}")
        if self.delay is not None and self.run_at is not None:
            raise ValueError(f"Call {self.task}: give delay or run_at, not both")


# One encoder for every payload: json.dumps with options builds a new encoder per call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

#: The deepest nesting of arrays and objects a payload, a result or a progress value may have. Deeper
#: values are refused where they are made: decoding one could exhaust the stack of whoever reads it.
MAX_JSON_DEPTH = 100
#: The largest progress value (its JSON, in bytes) ``Job.progress`` takes. It is stored in the job record
#: and sent in a ``progress`` event, so it stays well under ``events.MAX_EVENT_BYTES``.
MAX_PROGRESS_BYTES = 64 * 1024
#: A log line is cut to this many characters (up to four UTF-8 bytes each).
MAX_LOG_CHARS = 2000
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_ESCAPE = re.compile(rb"\\.")
#: An opening bracket counts 2, a closing one 0: after i brackets the running sum minus i is the depth.
_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep (brackets in strings aside).

    Two counts for a text with at most ``limit`` brackets; else one pass over the text in C loops (about
    10 ns a byte), whatever the nesting.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    weights = b"".join(data.split(b'"')[::2]).translate(None, _NOT_BRACKETS).translate(_WEIGHTS)
    return max(map(operator.sub, itertools.accumulate(weights), itertools.count(1)), default=0) > limit


def encode_payload(task: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> str:
    """JSON-encode a job's arguments; a value JSON cannot hold is a TypeError naming the argument.

    ``args`` must be a list or tuple and ``kwargs`` a mapping with string keys (anything else would be
    changed on the way: a string split into characters, a key ``1`` turned into ``"1"``). Arguments
    nested deeper than :data:`MAX_JSON_DEPTH` or over ``limit`` bytes are a :class:`PayloadError`.
    """
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"{task}: args must be a list or tuple, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{task}: kwargs must be a mapping of names to values, not {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"{task}: keyword argument names must be strings, not {type(key).__name__} {key!r}")
    try:
        payload = _encode({"t": task, "a": list(args), "k": dict(kwargs)})
    except RecursionError:
        raise PayloadError(f"{task}: arguments nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (TypeError, ValueError):
        for where, value in [*((f"argument {i}", v) for i, v in enumerate(args)), *kwargs.items()]:
            try:
                _encode(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{task}: {where} ({type(value).__name__}) is not JSON-serializable: {exc}") from None
        raise
    if len(payload) > limit:
        raise PayloadError(
            f"{task}: payload is {len(payload)} bytes, over the {limit}-byte limit "
            "(store large data elsewhere and pass a reference, or raise max_payload_bytes)"
        )
    if json_too_deep(payload):
        raise PayloadError(f"{task}: arguments nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def decode_payload(raw: str, job_id: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Job ``job_id``'s stored payload: task name, args and kwargs; anything else it holds is a
    :class:`PayloadError`.

    The payload comes from Redis, so it is treated as hostile: whatever it holds, this raises nothing else.
    """
    try:
        if json_too_deep(raw):
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise TypeError(f"a JSON object is expected, not {type(payload).__name__}")
        name, args, kwargs = payload["t"], payload["a"], payload["k"]
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("'t' must be a string, 'a' a list and 'k' an object")
    except Exception as exc:  # RecursionError and MemoryError included: one bad payload fails one job
        raise PayloadError(f"malformed payload for job {job_id}: {_short(repr(exc))}") from None
    return name, args, kwargs


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _ms(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def _typed(rec: Any, field: str, kind: type, required: bool = False) -> Any:
    """A record's field, which must be a ``kind`` (or absent, unless ``required``); a whole float counts as int."""
    value = rec.get(field)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"its {field} is {type(value).__name__}, not {kind.__name__}")
    return value


def _json(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A snapshot of one job as stored in Redis."""

    id: str
    queue: str
    task: str
    state: JobState
    attempts: int
    stalls: int
    priority: int
    progress: Any
    result: Any
    error: dict[str, Any] | None
    logs: list[str]
    created_at: datetime | None
    due_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    #: The schedule and tick that enqueued this job (None for a job enqueued by hand).
    schedule: str | None = None
    tick: datetime | None = None

    @classmethod
    def from_record(cls, job_id: str, queue: str, raw: str | bytes) -> JobStatus:
        """The status a stored record describes; :class:`CorruptRecord` if it cannot be read."""
        try:
            return cls._from_record(job_id, queue, raw)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError, OSError) as exc:
            raise CorruptRecord(
                f"job {job_id} in queue {queue!r}: its record in Redis cannot be read ({_short(repr(exc))}); "
                "the next worker step that meets it fails the job"
            ) from None

    @classmethod
    def _from_record(cls, job_id: str, queue: str, raw: str | bytes) -> JobStatus:
        rec = json.loads(raw)
        error = _json(_typed(rec, "error", str))
        logs = _typed(rec, "logs", list) or []
        if not isinstance(error, dict | None) or not all(isinstance(line, str) for line in logs):
            raise TypeError("its error is not an object or its logs are not lines of text")
        return cls(
            id=job_id,
            queue=queue,
            task=_typed(rec, "task", str, required=True),
            state=JobState(rec["state"]),
            attempts=_typed(rec, "attempt", int) or 0,
            stalls=_typed(rec, "stalls", int) or 0,
            priority=_typed(rec, "prio", int) or 0,
            progress=_json(_typed(rec, "progress", str)),
            result=_json(_typed(rec, "result", str)),
            error=error,
            logs=list(logs),
            created_at=_ms(rec.get("created")),
            due_at=_ms(rec.get("due")),
            started_at=_ms(rec.get("started")),
            finished_at=_ms(rec.get("finished")),
            worker=_typed(rec, "worker", str),
            schedule=_typed(rec, "schedule", str),
            tick=_ms(rec.get("tick")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


class JobHandle(Generic[R]):
    """A queued job: ask for its status or wait for its result (sync or async)."""

    __slots__ = ("client", "created", "id", "queue")

    def __init__(self, client: Client, job_id: str, queue: str, created: bool = True) -> None:
        self.client = client
        self.id = job_id
        self.queue = queue
        #: False when enqueueing found an existing job with this id and returned it instead.
        self.created = created

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} queue={self.queue} created={self.created}>"

    def status(self) -> JobStatus:
        """The job's status now; :class:`JobNotFound` if there is no such job."""
        return _found(self.id, self.queue, self.client.status(self.id, self.queue))

    async def astatus(self) -> JobStatus:
        """The job's status now; :class:`JobNotFound` if there is no such job."""
        return _found(self.id, self.queue, await self.client.astatus(self.id, self.queue))

    def cancel(self) -> str:
        """Cancel the job; see :meth:`Client.cancel` for what the returned state means."""
        return self.client.cancel(self.id, self.queue)

    async def acancel(self) -> str:
        """Cancel the job; see :meth:`Client.acancel` for what the returned state means."""
        return await self.client.acancel(self.id, self.queue)

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises :class:`JobFailed` if it failed or was cancelled, :class:`JobTimeout` if it did not
        finish within ``timeout`` seconds and :class:`JobNotFound` if there is no such job.
        """
        return self.client._result(self.id, self.queue, timeout)  # type: ignore[no-any-return]

    async def aresult(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises :class:`JobFailed` if it failed or was cancelled, :class:`JobTimeout` if it did not
        finish within ``timeout`` seconds and :class:`JobNotFound` if there is no such job.
        """
        return await self.client._aresult(self.id, self.queue, timeout)  # type: ignore[no-any-return]


def _found(job_id: str, queue: str, status: JobStatus | None) -> JobStatus:
    if status is None:
        raise JobNotFound(f"job {job_id} not found in queue {queue!r}")
    return status


class Job:
    """The running job, passed to a task whose first parameter is annotated ``Job``.

    ``id``, ``attempt`` and ``token`` let a task make its side effects
    idempotent: the same attempt can run again after a worker is lost, but
    each run holds a different fencing token, and only the current holder's
    progress and result are recorded.
    """

    __slots__ = ("_report", "attempt", "cancelled", "id", "lease_lost", "queue", "task", "token")

    def __init__(
        self,
        job_id: str,
        queue: str,
        task: str,
        attempt: int,
        token: int,
        report: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.id = job_id
        self.queue = queue
        self.task = task
        self.attempt = attempt
        self.token = token
        self._report = report
        #: Set when the worker learns another holder has this job; the result will be refused.
        self.lease_lost = False
        #: Set when the job's cancellation was requested: stop soon (async tasks are cancelled for you).
        self.cancelled = False

    def check_cancelled(self) -> None:
        """Raise :class:`~taskmesh.errors.Cancelled` if the job's cancellation was requested.

        For sync tasks, which the worker cannot interrupt: call it between steps of long work.
        """
        if self.cancelled:
            raise Cancelled(f"job {self.id} was cancelled")

    def __repr__(self) -> str:
        return f"<Job {self.id} task={self.task} attempt={self.attempt}>"

    def progress(self, value: float | Mapping[str, Any]) -> None:
        """Report progress: a number 0..100 or a JSON object. Non-blocking; sent in the next batch.

        A value nested deeper than :data:`MAX_JSON_DEPTH` or whose JSON is over :data:`MAX_PROGRESS_BYTES`
        is a :class:`PayloadError` (report a summary; keep large data elsewhere).
        """
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 <= value <= 100:
                raise ValueError(f"progress must be between 0 and 100, not {value}")
        elif not isinstance(value, Mapping):
            raise TypeError(f"progress must be a number 0..100 or a JSON object, not {type(value).__name__}")
        try:
            text = _encode(value)
        except RecursionError:
            text = "[" * (MAX_JSON_DEPTH + 1)
        if len(text) > MAX_PROGRESS_BYTES:  # ASCII: _encode escapes everything else
            raise PayloadError(
                f"progress is {len(text)} bytes of JSON, over the {MAX_PROGRESS_BYTES}-byte limit "
                "(report a summary; keep large data elsewhere)"
            )
        if json_too_deep(text):
            raise PayloadError(f"progress must not be nested deeper than {MAX_JSON_DEPTH} levels")
        self._send("p", text)

    def log(self, message: str) -> None:
        """Append a line to the job's log (the last 100 lines are kept) and emit a ``log`` event.

        Characters UTF-8 cannot hold (lone surrogates) are replaced with ``?``.
        """
        self._send("l", str(message)[:MAX_LOG_CHARS].encode("utf-8", "replace").decode())

    def _send(self, kind: str, value: str) -> None:
        if self.lease_lost:
            raise LeaseLost(f"job {self.id}: this worker's lease was taken over; stop working on it")
        if self._report is not None:
            self._report(kind, self.id, value)
