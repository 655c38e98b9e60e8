"""The ``k8s`` runner: each attempt of a task runs as one ``batch/v1`` Job.

The worker holds the job's lease while the Job runs; the runner creates the Job (or adopts the one a
previous holder of the same attempt created), waits for its ``Complete`` or ``Failed`` condition with
list+watch, and returns the outcome the pod left in Redis (see ``entry.py``). A cancel request or a
timeout deletes the Job; a job handed back on shutdown leaves it running for the next holder to adopt.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from typing_extensions import override

from taskmesh import Cancelled, ConfigurationError, Job, Retry, Settings, SlowDown, Task, Unrecoverable
from taskmesh.runners import BaseRunner
from taskmesh.store import AsyncQueueStore
from taskmesh.store.retry import RedisRetry  # not in taskmesh.store: a producer never loads tenacity

from . import manifest, names
from .api import Kube, KubeError, Obj, WatchStopper, api_client, check_job
from .manifest import Attempt
from .options import JobOptions, K8sConfig

log = logging.getLogger("taskmesh.k8s")
T = TypeVar("T")
#: A cancelled wait this close to the task's timeout was the timeout (the worker's clock started first).
TIMEOUT_SLACK = 0.5


class KubernetesJobFailed(Exception):
    """The attempt's Job failed: the task's error as the pod reported it, the Job's reason, the pod's exit
    and the end of its log."""


class RemoteTraceback(Exception):
    """The traceback of the task's error inside the pod (the ``__cause__`` of the error raised here)."""


def finished(job: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the Job has that condition, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


class K8sRunner(BaseRunner):
    """Runs tasks as Kubernetes Jobs; see the module docstring and README's *Kubernetes runner*."""

    def __init__(self, settings: Settings, config: K8sConfig | None = None, api: Any = None) -> None:
        super().__init__(settings)
        self.config = config or K8sConfig.from_env()
        # Each running job holds a thread while it watches; deletes and the start-up sweep need a few more.
        size = settings.concurrency * 2 + 4
        try:
            client = api if api is not None else api_client(self.config, size)
        except Exception as exc:  # a missing or broken kubeconfig: a start-up error, said plainly
            raise ConfigurationError(f"the k8s runner cannot load its Kubernetes configuration: {exc}") from exc
        self.kube = Kube(client, self.config)
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="taskmesh-k8s")
        self._options: dict[str, JobOptions] = {}
        self._store: AsyncQueueStore | None = None
        self._retrying = RedisRetry(settings)  # Redis calls wait out an outage, as the worker's own do
        self._sweeping: asyncio.Task[None] | None = None
        self._stoppers: set[WatchStopper] = set()
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------

    @override
    async def start(self, tasks: Sequence[Task[Any, Any]]) -> None:
        """Check every task's options, then sweep leftover Jobs (in the background)."""
        for task in tasks:
            self._options[task.name] = self._parse(task)
        namespaces = {self.config.namespace, *(str(options.namespace) for options in self._options.values())}
        self._sweeping = asyncio.create_task(self._sweep(sorted(namespaces)))

    @override
    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
        for stopper in list(self._stoppers):
            stopper.stop()
        if self._background:  # pending deletes: give them a bounded chance to land
            await asyncio.wait(self._background, timeout=self.config.request_timeout)
        self.kube.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            await self._store.aclose()

    def _parse(self, task: Task[Any, Any]) -> JobOptions:
        """The task's options, checked down to the Job they make (through the client's model of a Job)."""
        options = JobOptions.parse(task.name, task.runner_options, self.config, self.settings.redis_url)
        sample = Attempt(self.settings.prefix, task.queue, "check", 0, 1, 0, task.name, task.fn.__module__)
        try:
            check_job(manifest.build(sample, options, task.timeout, self.settings.events_maxlen))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ConfigurationError(f"task {task.name}: runner_options make an invalid Job: {exc}") from None
        return options

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        background = asyncio.ensure_future(coro)
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def _conn(self) -> AsyncQueueStore:
        """The runner's store: job records and the outcomes the pods leave (made at first use)."""
        if self._store is None:
            self._store = AsyncQueueStore(self.settings, direct=False)
        return self._store

    # -- one attempt ---------------------------------------------------------------

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run the attempt as a Kubernetes Job; its pod reads the job's arguments from Redis (see ``entry.py``)."""
        began = asyncio.get_running_loop().time()  # as close as can be to where the worker's timeout started
        options = self._options.get(task.name) or self._options.setdefault(task.name, self._parse(task))
        attempt = Attempt(
            self.settings.prefix,
            job.queue,
            job.id,
            await self._created(job),
            job.attempt,
            job.token,
            task.name,
            task.fn.__module__,
        )
        body = manifest.build(attempt, options, task.timeout, self.settings.events_maxlen)
        namespace, name = str(options.namespace), attempt.name
        stopper = WatchStopper()
        self._stoppers.add(stopper)
        # Shielded: a cancel must not leave a create in flight that would land after the Job's delete.
        creating = asyncio.ensure_future(self._thread(self._create_or_adopt, body, attempt))
        creating.add_done_callback(_retrieved)
        try:
            await asyncio.shield(creating)
            ended = await self._wait(namespace, name, stopper)
        except asyncio.CancelledError:
            stopper.stop()
            self._stopped(task, job, namespace, name, asyncio.get_running_loop().time() - began, creating)
            raise
        finally:
            self._stoppers.discard(stopper)
        return await self._outcome(attempt, options, ended)

    async def _created(self, job: Job) -> int:
        store = self._conn()
        raw = await self._retrying(lambda: store.job_record(job.queue, job.id))
        if raw is None:
            raise KubernetesJobFailed(f"job {job.id} has no record in queue {job.queue!r} (removed meanwhile?)")
        return int(json.loads(raw)["created"])

    def _create_or_adopt(self, body: Obj, attempt: Attempt) -> None:
        """Create the attempt's Job; if it exists (a previous holder of this attempt created it, or our own
        create was applied but its answer lost), adopt it once its labels show it is this attempt's."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.kube.create_job(body)
            log.info("job %s: created Kubernetes Job %s/%s", attempt.job_id, namespace, name)
            return
        except KubeError as exc:
            if exc.status != 409:
                raise KubernetesJobFailed(f"the Kubernetes API refused the Job: {exc}") from None
        existing = self.kube.read_job(namespace, name)
        if existing is None:  # deleted in between (by its TTL, say): create it again
            self.kube.create_job(body)
            return
        why = attempt.mismatch(existing)
        if why is not None:
            raise KubernetesJobFailed(
                f"a Job named {namespace}/{name} exists but was not made for attempt {attempt.attempt} of job "
                f"{attempt.job_id} ({why}); delete it, or run taskmesh in another namespace"
            )
        log.info("job %s: adopted the existing Kubernetes Job %s/%s", attempt.job_id, namespace, name)

    async def _wait(self, namespace: str, name: str, stopper: WatchStopper) -> Obj:
        """List, then watch from the list's resourceVersion until the Job ends; list again on 410 Gone.
        Whenever a watch ends (the server closes it after ``watch_seconds``, or it fails) the Job's status
        is read as a safety net."""
        version: str | None = None
        failures = 0
        while True:
            if version is None:
                items, version = await self._thread(
                    self.kube.list_jobs, namespace, field_selector=f"metadata.name={name}"
                )
                if not items:
                    raise KubernetesJobFailed(f"the Kubernetes Job {namespace}/{name} was deleted before it ended")
                if finished(items[0]):
                    return items[0]
            try:
                seen, version = await self._thread(self.kube.watch_job, namespace, name, version, stopper, finished)
                failures = 0
            except KubeError as exc:
                failures += 1
                if exc.status == 410:  # listed again at once; again and again only after a pause
                    log.info("watch of Job %s/%s: resourceVersion too old; listing again", namespace, name)
                    version = None
                    if failures > 1:
                        await asyncio.sleep(self.config.backoff.delay(failures))
                    continue
                log.warning("watch of Job %s/%s failed (%s); reading its status instead", namespace, name, exc)
                await asyncio.sleep(self.config.backoff.delay(failures))
                seen = None
            if seen is not None and not seen.get("deleted"):
                return seen
            current = await self._thread(self.kube.read_job, namespace, name)
            if current is None:
                raise KubernetesJobFailed(f"the Kubernetes Job {namespace}/{name} was deleted before it ended")
            if finished(current):
                return current

    def _stopped(
        self, task: Task[Any, Any], job: Job, namespace: str, name: str, ran: float, creating: asyncio.Future[None]
    ) -> None:
        """The run was cancelled: on a cancel request or a timeout delete the Job (and so its pod) once its
        create has ended; on a hand-back (the worker is stopping) leave it, for the job's next holder to adopt."""
        timed_out = task.timeout is not None and ran >= task.timeout - TIMEOUT_SLACK
        if job.cancelled or timed_out:
            why = "cancelled" if job.cancelled else "timed out"
            log.info("job %s %s: deleting Kubernetes Job %s/%s", job.id, why, namespace, name)
            self._spawn(self._delete(namespace, name, after=creating))
        else:
            log.info("job %s handed back: Kubernetes Job %s/%s left for the next holder", job.id, namespace, name)

    async def _delete(self, namespace: str, name: str, after: asyncio.Future[None] | None = None) -> None:
        if after is not None:
            await asyncio.wait([after])  # its outcome (created, adopted or refused) does not matter here
        try:
            await self._thread(self.kube.delete_job, namespace, name, self.config.propagation_policy)
        except KubeError as exc:
            log.error("could not delete Kubernetes Job %s/%s: %s", namespace, name, exc)

    # -- outcome ---------------------------------------------------------------------

    async def _outcome(self, attempt: Attempt, options: JobOptions, ended: Obj) -> Any:
        namespace, name = str(options.namespace), attempt.name
        store = self._conn()
        raw = await self._retrying(lambda: store.outcome(attempt.result_key))
        left: dict[str, Any] | None = None if raw is None else json.loads(raw)
        if finished(ended) == "Complete":
            if left is not None and left.get("ok"):
                return json.loads(left["result"])
            if left is None and not options.runs_entry:
                return None  # the user's own command: success, no result
            if left is None:
                raise KubernetesJobFailed(f"the Kubernetes Job {namespace}/{name} completed but left no result")
        details = await self._thread(self._failure_details, namespace, name, ended)
        if left is not None and left.get("kind") == "slowdown":
            # The job is deferred under the same attempt number, so the same Job name: clear the way.
            await self._retrying(lambda: store.drop_outcome(attempt.result_key))
            await self._delete(namespace, name)
        raise _error(left, details)

    def _failure_details(self, namespace: str, name: str, ended: Obj) -> str:
        """Why the Job failed, how its pod ended, and the end of the pod's log."""
        condition = _condition(ended, "Failed")
        text = f"Kubernetes Job {namespace}/{name} failed"
        if condition:
            text += f" ({condition.get('reason') or '?'}: {condition.get('message') or ''})"
        try:
            pods = self.kube.list_pods(namespace, f"{names.RUN_LABEL}={name}")
        except KubeError as exc:
            return f"{text}; its pods could not be listed: {exc}"
        if not pods:
            return f"{text}; no pod was found"
        pod = max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
        pod_name = str(pod["metadata"]["name"])
        text += f"; pod {pod_name}: {_container_state(pod)}"
        if self.config.log_lines:
            try:
                tail = self.kube.pod_log(namespace, pod_name, names.CONTAINER, self.config.log_lines)
                text += f"\nlast {self.config.log_lines} log lines:\n{tail.rstrip()}"
            except KubeError as exc:
                text += f"; its log could not be read: {exc}"
        return text

    # -- start-up sweep ------------------------------------------------------------------

    async def _sweep(self, namespaces: Sequence[str]) -> None:
        """Delete Jobs this installation (prefix) created whose taskmesh job no longer needs them."""
        selector = f"{names.MANAGED_BY}={names.MANAGER},{names.PREFIX_LABEL}={names.label_value(self.settings.prefix)}"
        removed = 0
        for namespace in namespaces:
            try:
                jobs, _ = await self._thread(self.kube.list_jobs, namespace, label_selector=selector)
                for obj in jobs:
                    if await self._leftover(obj):
                        name = obj["metadata"]["name"]
                        log.info("deleting leftover Kubernetes Job %s/%s", namespace, name)
                        await self._thread(self.kube.delete_job, namespace, name, self.config.propagation_policy)
                        removed += 1
            except (KubeError, ValueError, KeyError) as exc:
                log.warning("sweep of leftover Kubernetes Jobs in %s stopped: %s", namespace, exc)
        if removed:
            log.info("deleted %d leftover Kubernetes Job(s)", removed)

    async def _leftover(self, obj: Obj) -> bool:
        """The Job's taskmesh job is gone, finished, or at another attempt than the one that would adopt it."""
        metadata = obj.get("metadata") or {}
        annotations, labels = metadata.get("annotations") or {}, metadata.get("labels") or {}
        if annotations.get(names.PREFIX_ANNOTATION) != self.settings.prefix:
            return False  # another installation's, its prefix label only looked the same
        queue, job_id = annotations[names.QUEUE_ANNOTATION], annotations[names.JOB_ANNOTATION]
        attempt = int(labels[names.ATTEMPT_LABEL])
        store = self._conn()
        raw = await self._retrying(lambda: store.job_record(queue, job_id))
        if raw is None:
            return True
        record = json.loads(raw)
        if str(record.get("created")) != annotations.get(names.CREATED_ANNOTATION):
            return True  # made for an earlier job with the same id
        state, current = record.get("state"), int(record.get("attempt") or 0)
        if state == "active":
            return attempt != current
        if state in ("waiting", "delayed"):  # handed back or stalled: its next lease is this attempt again
            return attempt != current + 1
        return True


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark the outcome seen: a run cancelled mid-create does not await its create (only its delete waits)."""
    if not future.cancelled():
        future.exception()


def _container_state(pod: Obj) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == names.CONTAINER), statuses[0] if statuses else None)
    phase = (pod.get("status") or {}).get("phase") or "?"
    if status is None:
        return f"phase {phase}"
    state = status.get("state") or {}
    if "terminated" in state:
        ended = state["terminated"]
        text = f"container {status.get('name')} exited {ended.get('exitCode')} ({ended.get('reason') or '?'})"
        return f"{text}: {ended['message']}" if ended.get("message") else text
    if "waiting" in state:
        waiting = state["waiting"]
        return f"container {status.get('name')} never ran: {waiting.get('reason')}: {waiting.get('message') or ''}"
    return f"phase {phase}"


def _error(left: Mapping[str, Any] | None, details: str) -> BaseException:
    """The exception the worker records for a failed Job: the task's own kind of error where the pod said."""
    if left is None:
        return KubernetesJobFailed(details)
    error = left.get("error") or {}
    message = f"{error.get('type', 'Error')}: {error.get('message', '')}\n{details}"
    kind = left.get("kind")
    exc: BaseException
    if kind == "retry":
        exc = Retry(left.get("delay"), message)
    elif kind == "slowdown":
        exc = SlowDown(float(left.get("delay") or 0), message)
    elif kind == "unrecoverable":
        exc = Unrecoverable(message)
    elif kind == "cancelled":
        exc = Cancelled(message)
    else:
        exc = KubernetesJobFailed(message)
    if error.get("traceback"):
        exc.__cause__ = RemoteTraceback(error["traceback"])
    return exc
