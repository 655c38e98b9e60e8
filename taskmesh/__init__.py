"""taskmesh: a Python job queue on Redis. Fast, fenced, at-least-once, pleasant to use."""

from ._version import __version__
from .client import Client, default_client, set_default_client
from .dispatch import Worker, WorkerStats
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
from .plugins import hookimpl
from .registry import Registry
from .schedule import Schedule, ScheduleEntry, ScheduleInfo
from .settings import Settings
from .task import Backoff, Task, TaskCall, task

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
