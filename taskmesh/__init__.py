"""taskmesh: a Python job queue on Redis. Fast, fenced, at-least-once, pleasant to use.

A producer that only enqueues never loads the worker, pluggy or tenacity: ``Worker``, ``WorkerStats`` and
``hookimpl`` are imported when first used (``from taskmesh import Worker`` works as usual).
"""

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .backoff import Backoff
from .client import Client, default_client, set_default_client
from .errors import (
    Cancelled,
    ConfigurationError,
    CorruptRecord,
    DuplicateTaskError,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PayloadError,
    RedisFull,
    RedisUnavailable,
    Retry,
    SlowDown,
    TaskmeshError,
    UnknownTaskError,
    Unrecoverable,
)
from .events import Event
from .job import Call, Job, JobHandle, JobState, JobStatus
from .limits import Limit, QueueSettings
from .registry import Registry
from .schedule import Schedule, ScheduleEntry, ScheduleInfo
from .settings import Settings
from .task import Task, TaskCall, TaskOptions, task

if TYPE_CHECKING:
    from .dispatch import Worker, WorkerStats
    from .plugins import hookimpl

#: The names imported on first use, and the module each comes from.
_LAZY = {"Worker": ".dispatch", "WorkerStats": ".dispatch", "hookimpl": ".plugins"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "Backoff",
    "Call",
    "Cancelled",
    "Client",
    "ConfigurationError",
    "CorruptRecord",
    "DuplicateTaskError",
    "Event",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "JobTimeout",
    "LeaseLost",
    "Limit",
    "PayloadError",
    "QueueSettings",
    "RedisFull",
    "RedisUnavailable",
    "Registry",
    "Retry",
    "Schedule",
    "ScheduleEntry",
    "ScheduleInfo",
    "Settings",
    "SlowDown",
    "Task",
    "TaskCall",
    "TaskOptions",
    "TaskmeshError",
    "UnknownTaskError",
    "Unrecoverable",
    "Worker",
    "WorkerStats",
    "__version__",
    "default_client",
    "hookimpl",
    "set_default_client",
    "task",
]
