"""A third-party runner: runs tasks like ``inline`` and writes an audit line to each job's log.

Install the package and mark a task ``@task(runner="audited")``; the worker finds the runner through
the ``taskmesh`` entry point, like any plugin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import override

from taskmesh import Job, Settings, Task, hookimpl
from taskmesh.runners import BaseRunner, RunnerRegistry
from taskmesh.runners.inline import InlineRunner


class AuditedRunner(BaseRunner):
    """Delegates to the inline runner, then logs ``audited: <task> attempt N <outcome> in X ms`` on the job."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.inner = InlineRunner(settings)

    @override
    async def start(self, tasks: Sequence[Task[Any, Any]]) -> None:
        await self.inner.start(tasks)

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        started = time.perf_counter()
        outcome = "raised"
        try:
            result = await self.inner.run(task, job, args, kwargs)
            outcome = "returned"
            return result
        finally:
            took = (time.perf_counter() - started) * 1000
            job.log(f"audited: {task.name} attempt {job.attempt} {outcome} in {took:.1f} ms")

    @override
    async def close(self) -> None:
        await self.inner.close()


@hookimpl
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    register.add("audited", AuditedRunner)
