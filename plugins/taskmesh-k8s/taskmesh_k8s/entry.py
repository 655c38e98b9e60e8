"""Runs one attempt of a task inside its Job's pod: ``python -m taskmesh_k8s.entry``.

The Job gives it (as ``TASKMESH_*`` variables) the Redis URL and prefix, the queue, the job id, attempt
and fencing token, the task's name and module, and the key to leave the outcome under. It reads the
job's arguments from Redis, imports the module and runs the task found there by name, exactly as a
worker would. ``job.progress()`` and ``job.log()`` go to Redis under the token, so they are refused
once another holder has the job. The outcome (result, or the error and how to treat it) is left
under the result key for the worker, which records it when it sees the Job end: the worker, holding
the lease, stays the only one that finishes the job. Exit status: 0 done, 1 the task raised, 2 the
attempt could not start (bad environment, Redis unreachable, unknown task, malformed payload).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskmesh import Cancelled, Job, Registry, Retry, Settings, SlowDown, Task, Unrecoverable
from taskmesh.errors import PayloadError, TaskmeshError
from taskmesh.job import decode_payload
from taskmesh.runners import BaseRunner, error_json, result_json
from taskmesh.store import QueueStore, RedisError, Update

log = logging.getLogger("taskmesh.k8s.entry")
EXIT_FAILED, EXIT_SETUP = 1, 2


@dataclass(frozen=True, slots=True)
class Context:
    """What the Job tells the pod about the attempt it runs."""

    settings: Settings
    queue: str
    job_id: str
    attempt: int
    token: int
    task: str
    module: str
    result_key: str
    result_ttl: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Context:
        settings = Settings.load(env=env, pyproject=None)
        return cls(
            settings=settings,
            queue=env["TASKMESH_QUEUE"],
            job_id=env["TASKMESH_JOB_ID"],
            attempt=int(env["TASKMESH_JOB_ATTEMPT"]),
            token=int(env["TASKMESH_JOB_TOKEN"]),
            task=env["TASKMESH_TASK"],
            module=env["TASKMESH_TASK_MODULE"],
            result_key=env["TASKMESH_RESULT_KEY"],
            result_ttl=int(env.get("TASKMESH_RESULT_TTL", "86400")),
        )


class Reporter:
    """``Job.progress``/``Job.log`` for the pod: each update is one fenced ``step`` call (leasing nothing),
    sent at once. A refused update (another holder has the job) marks the job's lease lost, so the next
    report raises."""

    def __init__(self, store: QueueStore, ctx: Context) -> None:
        self.store = store
        self.ctx = ctx
        self.job: Job | None = None

    def __call__(self, kind: str, job_id: str, value: str) -> None:
        ctx = self.ctx
        update = Update(kind, job_id, ctx.token, value)
        try:
            accepted = self.store.step(ctx.queue, f"k8s:{job_id}", 0, [update]).accepted
        except RedisError as exc:  # progress is best effort; the outcome is what counts
            log.warning("could not report %s for job %s: %s", "progress" if kind == "p" else "a log line", job_id, exc)
            return
        if not accepted[0] and self.job is not None:
            self.job.lease_lost = True


def outcome(exc: BaseException | None, result: Any = None, token: int = 0) -> dict[str, Any]:
    """What the pod leaves for the worker: the result JSON, or the error and how the worker treats it."""
    if exc is None:
        return {"ok": True, "result": result_json(result), "token": token}
    kind, delay = "error", None
    if isinstance(exc, Retry):
        kind, delay = "retry", exc.delay
    elif isinstance(exc, SlowDown):
        kind, delay = "slowdown", exc.delay
    elif isinstance(exc, Unrecoverable):
        kind = "unrecoverable"
    elif isinstance(exc, Cancelled):
        kind = "cancelled"
    return {"ok": False, "kind": kind, "delay": delay, "error": json.loads(error_json(exc)), "token": token}


def load(store: QueueStore, ctx: Context) -> tuple[Task[Any, Any], list[Any], dict[str, Any]]:
    try:
        raw = store.payload(ctx.queue, ctx.job_id)
    except ValueError as exc:  # a queue name no queue can have
        raise TaskmeshError(str(exc)) from None
    if raw is None:
        raise TaskmeshError(f"job {ctx.job_id} has no payload in queue {ctx.queue!r} (removed meanwhile?)")
    try:
        name, args, kwargs = decode_payload(raw, ctx.job_id)
    except PayloadError as exc:
        raise TaskmeshError(str(exc)) from None
    if name != ctx.task:
        raise TaskmeshError(f"job {ctx.job_id} is for task {name!r}, not {ctx.task!r}")
    task = Registry.from_modules([ctx.module]).get(name)
    if task is None:
        raise TaskmeshError(f"module {ctx.module!r} defines no task named {name!r}")
    return task, args, kwargs


def run(store: QueueStore, ctx: Context) -> int:
    try:
        task, args, kwargs = load(store, ctx)
    except (TaskmeshError, RedisError) as exc:
        print(f"taskmesh: {exc}", file=sys.stderr)
        _leave(store, ctx, outcome(exc, token=ctx.token))
        return EXIT_SETUP
    reporter = Reporter(store, ctx)
    job = reporter.job = Job(ctx.job_id, ctx.queue, task.name, ctx.attempt, ctx.token, reporter)
    call_args = BaseRunner.call_args(task, job, args)
    try:
        result = asyncio.run(task.fn(*call_args, **kwargs)) if task.is_async else task.fn(*call_args, **kwargs)
        left = outcome(None, result, ctx.token)
    except BaseException as exc:  # the task's error, whatever it is, is this attempt's outcome
        traceback.print_exc()
        _leave(store, ctx, outcome(exc, token=ctx.token))
        return EXIT_FAILED
    if not _leave(store, ctx, left):
        return EXIT_FAILED
    return 0


def _leave(store: QueueStore, ctx: Context, value: dict[str, Any]) -> bool:
    try:
        store.leave_outcome(ctx.result_key, json.dumps(value), ctx.result_ttl)
    except RedisError as exc:
        print(f"taskmesh: cannot leave the outcome of job {ctx.job_id} in Redis: {exc}", file=sys.stderr)
        return False
    return True


def main(env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx = Context.from_env(os.environ if env is None else env)
    except (KeyError, ValueError, TaskmeshError) as exc:
        print(f"taskmesh: this pod's environment does not describe a taskmesh job: {exc!r}", file=sys.stderr)
        return EXIT_SETUP
    store = QueueStore(ctx.settings, direct=False)
    try:
        return run(store, ctx)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
