"""How the worker's parts start and stop: each starts on the worker's ``AsyncExitStack`` and pushes its own
clean-up there, so whatever started is stopped, in reverse order, however ``Worker.run`` ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Protocol

from ..store.worker import UNREACHABLE_ERRORS

log = logging.getLogger("taskmesh.worker")
#: How long a stopping worker waits for its background tasks to end once cancelled.
CANCEL_WAIT = 1.0


class Part(Protocol):
    """A part of the worker with a life of its own (the upkeep, the listener)."""

    async def start(self, stack: AsyncExitStack) -> None:
        """Start, and push onto ``stack`` what stops this part again."""
        ...


async def cancel_tasks(tasks: Sequence[asyncio.Task[None]], worker_id: str) -> None:
    """Cancel background tasks and wait (at most ``CANCEL_WAIT``) for them to end; log what failed."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    # A cancel that lands inside a redis-py read can be swallowed; never wait forever for it.
    done, _ = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
    for task in done:
        # A call may have given up on Redis while stopping (see retry.py); anything else is news.
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, UNREACHABLE_ERRORS):
            log.error("worker %s: %s failed", worker_id, task.get_name(), exc_info=error)
