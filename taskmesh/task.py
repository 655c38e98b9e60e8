"""``@task``: turn a plain function into a :class:`Task`. Decorating changes no global state."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from . import default
from .backoff import Backoff
from .errors import MAX_DELAY_SECONDS
from .job import Call, Job
from .limits import Limit
from .names import check_name, check_new_job_id
from .schedule import Schedule

if TYPE_CHECKING:
    from .client import Client
    from .job import JobHandle

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
OP = ParamSpec("OP")

PRIORITY_RANGE = range(-1000, 1001)


def _doc(text: str) -> dict[str, str]:
    """A :class:`TaskOptions` field's metadata: what the option means."""
    return {"doc": text}


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskOptions:
    """A task's options, declared once: ``@task(...)`` and ``Task(fn, ...)`` take these keywords (their
    static types too: a type checker reads them from this class), ``@task``'s reference lists these
    defaults and docs, and an unknown keyword is refused against these names.

    The values are kept as given; :class:`Task` checks them and holds what they mean (a :class:`Backoff`,
    a :class:`Limit`, a :class:`Schedule`).
    """

    name: str | None = field(
        default=None, metadata=_doc("the name producers enqueue it by (default ``module.function``)")
    )
    queue: str = field(default="default", metadata=_doc("the queue its jobs go to"))
    retries: int = field(default=0, metadata=_doc("extra attempts after the first"))
    backoff: float | Backoff | None = field(
        default=None, metadata=_doc("the wait before a retry: seconds or a :class:`Backoff` (default ``Backoff()``)")
    )
    timeout: float | None = field(default=None, metadata=_doc("seconds an attempt may run (None: no limit)"))
    priority: int = field(default=0, metadata=_doc("-1000..1000, higher first"))
    runner: str = field(default="inline", metadata=_doc("the runner that runs its jobs"))
    runner_options: Mapping[str, Any] | None = field(
        default=None,
        metadata=_doc("a mapping the runner reads (e.g. the ``k8s`` runner's image); checked when a worker starts"),
    )
    rate_limit: str | Limit | None = field(
        default=None, metadata=_doc('``"100/m"`` or a :class:`Limit`: starts of this task across all workers')
    )
    max_active: int | None = field(default=None, metadata=_doc("jobs of this task active at once across all workers"))
    schedule: Schedule | None = field(
        default=None, metadata=_doc("a :class:`Schedule` that runs it by itself (start/end, arguments, policies)")
    )
    cron: str | None = field(default=None, metadata=_doc('runs it by itself on a cron expression (``"0 0 * * *"``)'))
    every: float | timedelta | None = field(
        default=None, metadata=_doc("runs it by itself at an interval (``timedelta(minutes=5)``, or seconds)")
    )
    tz: str | None = field(default=None, metadata=_doc('the time zone of ``cron`` and ``every`` (default ``"UTC"``)'))


_OPTIONS = frozenset(f.name for f in fields(TaskOptions))


def _declared(options: Mapping[str, Any], where: str) -> TaskOptions:
    """``options`` as a :class:`TaskOptions`; an unknown one is a TypeError naming it and the known ones."""
    unknown = set(options) - _OPTIONS
    if unknown:
        names, known = ", ".join(sorted(unknown)), ", ".join(sorted(_OPTIONS))
        raise TypeError(f"{where} got unknown option(s) {names}; known: {known}")
    return TaskOptions(**options)


def _show_options(fn: Callable[..., Any]) -> None:
    """Show :class:`TaskOptions`' keywords in place of ``fn``'s ``**options``: to ``inspect.signature``
    (hence on the API reference), and under its docstring, each with its default and meaning."""
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    keywords = inspect.signature(TaskOptions).parameters.values()
    fn.__signature__ = signature.replace(parameters=[*own, *keywords])  # type: ignore[attr-defined]
    listed = "".join(f"    - ``{f.name}`` (``{f.default!r}``): {f.metadata['doc']}\n" for f in fields(TaskOptions))
    fn.__doc__ = f"{(fn.__doc__ or '').rstrip()}\n\n{listed}"


def _takes_options(
    options: Callable[OP, object],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, Callable[..., Any], OP], None]]:
    """``@_takes_options(TaskOptions)`` on ``__init__(self, fn, /, **options)``: a type checker sees the
    keywords of ``options``, and so does ``inspect.signature``. The method itself is not wrapped."""

    def apply(init: Callable[..., None]) -> Callable[Concatenate[Any, Callable[..., Any], OP], None]:
        _show_options(init)
        return init

    return apply


def _keywords_of(options: Callable[OP, object]) -> Callable[[Callable[..., T]], Callable[OP, T]]:
    """``@_keywords_of(TaskOptions)`` on an ``@overload`` of ``f(**options)``: a type checker sees the
    keywords of ``options`` (their names, types and defaults)."""

    def apply(fn: Callable[..., T]) -> Callable[OP, T]:
        return fn

    return apply


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_backoff(value: float | Backoff | None) -> Backoff:
    if value is None:
        return Backoff()
    if isinstance(value, Backoff):
        return value
    if _is_number(value):
        return Backoff.fixed(float(value))
    raise TypeError(f"backoff must be seconds or a taskmesh.Backoff, not {value!r}")


def _as_limit(rate_limit: str | Limit | None, max_active: int | None) -> Limit | None:
    if isinstance(rate_limit, Limit):
        if max_active is not None:
            return Limit(rate_limit.rate, rate_limit.per, max_active)
        return rate_limit
    if isinstance(rate_limit, str):
        return Limit.parse(rate_limit, max_active=max_active)
    if rate_limit is not None:
        raise ValueError(f"rate_limit must be text like '100/m' or a taskmesh.Limit, not {rate_limit!r}")
    return None if max_active is None else Limit(max_active=max_active)


def _as_schedule(
    schedule: Schedule | None, cron: str | None, every: float | timedelta | None, tz: str | None
) -> Schedule | None:
    if schedule is not None:
        if cron is not None or every is not None or tz is not None:
            raise ValueError("give schedule= or cron=/every=/tz=, not both")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a taskmesh.Schedule, not {schedule!r}")
        return schedule
    if cron is None and every is None:
        if tz is not None:
            raise ValueError("tz= needs cron= or every=")
        return None
    return Schedule(cron=cron, every=every, tz=tz or "UTC")  # type: ignore[arg-type]


def _default_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``; a function defined inside another drops the ``<locals>`` marker."""
    name = f"{fn.__module__}.{fn.__qualname__}".replace(".<locals>", "")
    try:
        return check_name("task name", name)
    except ValueError:
        raise ValueError(f"{name!r} cannot be a task name; give the task one with @task(name=...)") from None


def _takes_job(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # an unresolvable annotation elsewhere must not hide a Job parameter
        hints = getattr(fn, "__annotations__", {})
    annotation = hints.get(params[0].name)
    return annotation is Job or annotation == "Job"


class Task(Generic[P, R]):
    """A registered unit of work: the function plus its options.

    Calling the task calls the function. ``enqueue`` queues a job instead;
    ``P`` are the enqueued arguments (without a leading ``Job``), ``R`` the result.
    """

    __slots__ = (
        "backoff",
        "fn",
        "is_async",
        "limit",
        "name",
        "priority",
        "queue",
        "retries",
        "runner",
        "runner_options",
        "schedule",
        "takes_job",
        "timeout",
    )

    @_takes_options(TaskOptions)
    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        """Check the options and keep what they mean (``@task`` calls this). The options, each with its default:"""
        declared = _declared(options, "Task")
        self.fn = fn
        self.name = check_name("task name", declared.name or _default_name(fn))
        self.queue = check_name("queue name", declared.queue)
        retries = declared.retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"task {self.name}: retries must be an int >= 0, not {retries!r}")
        self.retries = retries
        self.backoff = _as_backoff(declared.backoff)
        timeout = declared.timeout
        if timeout is not None and not (_is_number(timeout) and 0 < timeout < math.inf):
            raise ValueError(f"task {self.name}: timeout must be > 0 seconds, not {timeout!r}")
        self.timeout = timeout
        self.priority = check_priority(declared.priority)
        self.runner = check_name("runner name", declared.runner)
        runner_options = declared.runner_options
        if runner_options is not None and not isinstance(runner_options, Mapping):
            raise TypeError(f"task {self.name}: runner_options must be a mapping, not {type(runner_options).__name__}")
        #: Options for the task's runner, read-only; the runner checks them when the worker starts.
        self.runner_options: Mapping[str, Any] = MappingProxyType(dict(runner_options or {}))
        try:
            self.limit = _as_limit(declared.rate_limit, declared.max_active)
        except ValueError as exc:
            raise ValueError(f"task {self.name}: {exc}") from None
        try:
            self.schedule = _as_schedule(declared.schedule, declared.cron, declared.every, declared.tz)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task {self.name}: {exc}") from None
        self.takes_job = _takes_job(fn)
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue} runner={self.runner}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def location(self) -> str:
        """Where the function is defined, ``module:qualname``; used in error messages."""
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    def options(
        self,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        client: Client | None = None,
    ) -> TaskCall[P, R]:
        """Enqueue options for one call: ``task.options(job_id="x", delay=5).enqueue(...)``."""
        return TaskCall(self, job_id=job_id, delay=delay, run_at=run_at, priority=priority, queue=queue, client=client)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """Describe one job without enqueueing it (for ``Client.enqueue_many``)."""
        return Call(self.name, args, kwargs, self.queue, priority=self.priority)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Queue a job on the default client; returns its handle at once."""
        return default.default_client().enqueue(self, *args, **kwargs)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Async twin of :meth:`enqueue`."""
        return await default.default_client().aenqueue(self, *args, **kwargs)


def check_delay(delay: float | None) -> float | None:
    """A delay in seconds, at most ten years (a past due time, i.e. a negative delay, means now)."""
    if delay is not None and not (_is_number(delay) and math.isfinite(delay)):
        raise ValueError(f"delay must be a number of seconds, not {delay!r}")
    if delay is not None and delay > MAX_DELAY_SECONDS:
        raise ValueError(f"delay must be at most {MAX_DELAY_SECONDS} seconds (ten years), not {delay!r}")
    return delay


def check_run_at(run_at: datetime | None) -> datetime | None:
    """A due time with its time zone, at most ten years from now (a past one means now)."""
    if run_at is None:
        return None
    if not isinstance(run_at, datetime):
        raise ValueError(f"run_at must be a datetime, not {run_at!r}")
    if run_at.utcoffset() is None:
        raise ValueError(
            f"run_at must say its time zone, not {run_at.isoformat()} (naive: which zone?): "
            "e.g. datetime.now(UTC) + timedelta(hours=1), or run_at.replace(tzinfo=ZoneInfo(...))"
        )
    try:
        too_late = run_at.timestamp() > time.time() + MAX_DELAY_SECONDS
    except (OverflowError, ValueError):  # out of the platform's time range
        too_late = True
    if too_late:
        raise ValueError(f"run_at must be at most ten years from now, not {run_at.isoformat()}")
    return run_at


def check_priority(priority: int) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITY_RANGE:
        raise ValueError(f"priority must be an int from -1000 to 1000 (higher runs first), not {priority!r}")
    return priority


class TaskCall(Generic[P, R]):
    """A task with per-call enqueue options."""

    __slots__ = ("client", "delay", "job_id", "priority", "queue", "run_at", "task")

    def __init__(
        self,
        task: Task[P, R],
        *,
        job_id: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        client: Client | None = None,
    ) -> None:
        self.task = task
        self.job_id = None if job_id is None else check_new_job_id(job_id)
        if delay is not None and run_at is not None:
            raise ValueError("give delay or run_at, not both")
        self.delay = check_delay(delay)
        self.run_at = check_run_at(run_at)
        self.priority = task.priority if priority is None else check_priority(priority)
        self.queue = task.queue if queue is None else check_name("queue name", queue)
        self.client = client

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        return Call(
            task=self.task.name,
            args=args,
            kwargs=kwargs,
            queue=self.queue,
            job_id=self.job_id,
            delay=self.delay,
            run_at=self.run_at,
            priority=self.priority,
        )

    def _client(self) -> Client:
        return self.client or default.default_client()

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        return self._client().submit(self.call(*args, **kwargs))

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        return await self._client().asubmit(self.call(*args, **kwargs))


@overload
def task(fn: Callable[Concatenate[Job, P], Awaitable[R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[Concatenate[Job, P], R], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
@_keywords_of(TaskOptions)
def task(**options: Any) -> _Decorator: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Mark a function as a task: ``@task`` or ``@task(name=..., queue=..., retries=...)``.

    An unknown option raises ``TypeError``. The options are the fields of :class:`TaskOptions`, each with
    its default:
    """
    if fn is not None:
        return Task(fn, **options)
    _declared(options, "@task")
    return _Decorator(options)


_show_options(task)


class _Decorator:
    __slots__ = ("options",)

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    @overload
    def __call__(self, fn: Callable[Concatenate[Job, P], Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Job, P], R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Any:
        return Task(fn, **self.options)
