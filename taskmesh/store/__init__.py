"""Redis storage: key names (keys.py), the Lua scripts that are the only state machine (scripts.py), and the
stores, the one way taskmesh talks to Redis: :class:`QueueStore` (sync), :class:`AsyncQueueStore` (asyncio),
:class:`WorkerStore` (a worker's) and :class:`EventGroup` (the event bus's consumer group)."""

from .aqueue import AsyncQueueStore
from .base import (
    EventEntry,
    JobValues,
    RedisError,
    ResponseError,
    ScheduleLook,
    Stepped,
    Wakeup,
)
from .connect import CONNECTION_ERRORS
from .groups import Consumer, EventGroup, GroupMissing
from .queue import QueueStore
from .scripts import Update
from .worker import WorkerStore

__all__ = [
    "CONNECTION_ERRORS",
    "AsyncQueueStore",
    "Consumer",
    "EventEntry",
    "EventGroup",
    "GroupMissing",
    "JobValues",
    "QueueStore",
    "RedisError",
    "ResponseError",
    "ScheduleLook",
    "Stepped",
    "Update",
    "Wakeup",
    "WorkerStore",
]
