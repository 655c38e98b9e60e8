"""One attempt: a leased job run on its task's runner, under the task's timeout, its outcome filed as an update.

What the outcome means (complete, retry, defer, cancel, hand back, ...) is :func:`~taskmesh.runners.outcome.classify`'s
to decide, a pure function any runner shares; this module only runs the attempt and hands the update on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..errors import PayloadError, UnknownTaskError
from ..job import decode_payload
from ..registry import Registry
from ..runners.base import Runner
from ..runners.outcome import JobTimeoutError, Stop, classify, error_json, unrunnable
from ..store.scripts import Leased, Update
from ..task import Task
from .inflight import Inflight, Run


class Attempts:
    """Starts the jobs the dispatcher gives it, one attempt each, and files each outcome with ``inflight``."""

    def __init__(self, registry: Registry, runners: Mapping[str, Runner], inflight: Inflight) -> None:
        self.registry = registry
        self.runners = runners
        self.inflight = inflight

    def start(self, run: Run) -> None:
        """Start the attempt of a job leased ahead; a job no attempt can run fails at once, without a retry."""
        leased, job = run.leased, run.job
        assert leased is not None and self.inflight.loop is not None
        run.leased = None
        run.started = self.inflight.loop.time()
        try:
            task, args, kwargs = self._decode(leased)
        except (PayloadError, UnknownTaskError) as exc:
            self.inflight.finish(run, unrunnable(job, exc))
            return
        run.task = asyncio.create_task(self._attempt(run, task, args, kwargs))

    def _decode(self, leased: Leased) -> tuple[Task[Any, Any], list[Any], dict[str, Any]]:
        name, args, kwargs = decode_payload(leased.payload, leased.id)
        task = self.registry.get(name)
        if task is None:
            known = ", ".join(t.name for t in self.registry) or "none"
            raise UnknownTaskError(f"no task named {name!r} is registered in this worker (known: {known})")
        return task, args, kwargs

    async def _attempt(self, run: Run, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        """Run the attempt and file its outcome; never ends cancelled (a stopped run is filed as such)."""
        job = run.job
        update: Update | None = None
        try:
            call = self.runners[task.runner].run(task, job, args, kwargs)
            if task.timeout is None:
                result = await call
            else:
                deadline = asyncio.timeout(task.timeout)
                try:
                    async with deadline:
                        result = await call
                except TimeoutError:
                    if deadline.expired():
                        raise JobTimeoutError(f"timeout: the task ran longer than {task.timeout}s") from None
                    raise
            update = classify(task, job, None, result)
        except asyncio.CancelledError as exc:
            # The worker cancels a run to stop it on request or to hand it back; a task that raises
            # CancelledError itself fails.
            stop: Stop | None = "cancel" if run.cancelling else "hand-back" if self.inflight.handing_back else None
            update = classify(task, job, exc, stop=stop)
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a task body fails that job only
            update = classify(task, job, exc)
        finally:
            if update is None:  # reporting the outcome itself failed: never leave the job active
                update = Update("f", job.id, job.token, error_json(RuntimeError("the outcome could not be recorded")))
            self.inflight.finish(run, update)
