"""The Kubernetes API calls the runner makes, on the official (synchronous) client.

Every call but a watch is retried on transient errors (429, honouring ``Retry-After``; 5xx; timeouts;
dropped connections) with exponential backoff; other errors (403, 404, 409, 422, ...) raise
:class:`KubeError` at once with the API's own message. The runner calls these from its threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes import config as _config
from kubernetes import watch as _watch
from kubernetes.client.exceptions import ApiException
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from .options import K8sConfig

log = logging.getLogger("taskmesh.k8s")
T = TypeVar("T")
#: The longest ``Retry-After`` honoured; a server asking for more is asked again after this.
MAX_RETRY_AFTER = 60.0

Obj = dict[str, Any]
# The parts of the client without type hints, typed once here.
kube_config: Any = _config
kube_watch: Any = _watch


class KubeError(Exception):
    """The Kubernetes API refused a request, or kept failing; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_client(cfg: K8sConfig, pool_size: int) -> Any:
    """An ``ApiClient`` from the kubeconfig (``cfg.kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``), or the
    pod's service account when running in a cluster with no kubeconfig named."""
    configuration = client.Configuration()
    in_cluster = os.environ.get("KUBERNETES_SERVICE_HOST") and not (cfg.kubeconfig or os.environ.get("KUBECONFIG"))
    if in_cluster:
        kube_config.load_incluster_config(client_configuration=configuration)
    else:
        kube_config.load_kube_config(
            config_file=cfg.kubeconfig, context=cfg.context, client_configuration=configuration, persist_config=False
        )
    configuration.retries = False  # retried here, where a POST is retried only when that is safe
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def check_job(manifest: Obj) -> Any:
    """The client's model of the Job: raises ValueError when the manifest does not fit it."""
    return client.V1Job.from_dict(manifest)


def transient(exc: BaseException) -> bool:
    """Worth another try: rate limited, a server error, a timeout or a dropped connection."""
    if isinstance(exc, ApiException):
        return exc.status == 429 or (isinstance(exc.status, int) and exc.status >= 500)
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def retry_after(exc: BaseException | None) -> float | None:
    headers = getattr(exc, "headers", None) if isinstance(exc, ApiException) else None
    raw = headers.get("Retry-After") if headers else None
    try:
        return None if raw is None else min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    except ValueError:  # an HTTP date: rare from the API server; fall back to backoff
        return None


def api_message(exc: ApiException) -> str:
    """The ``message`` of the API's Status object, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


class WatchStopper:
    """Lets the event loop end a watch that one of the runner's threads is blocked in."""

    def __init__(self) -> None:
        self.stopped = False
        self._watch: Any = None
        self._lock = threading.Lock()

    def attach(self, w: Any) -> None:
        with self._lock:
            self._watch = w

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            if self._watch is not None:
                self._watch.stop()  # shuts the socket down, so a blocked read returns


class Kube:
    """Jobs, pods and logs through one ``ApiClient``. ``close()`` interrupts backoff sleeps."""

    def __init__(self, api: Any, cfg: K8sConfig) -> None:
        self.api = api
        self.cfg = cfg
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self.api.close()

    # -- retries ---------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.retries + 1),
            wait=self._backoff,
            retry=retry_if_exception(transient),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        try:
            return retrying(fn)
        except ApiException as exc:
            raise KubeError(f"{what}: {describe(exc)}", exc.status) from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise KubeError(f"{what}: {describe(exc)}") from None

    def _backoff(self, state: RetryCallState) -> float:
        delay = self.cfg.backoff.delay(state.attempt_number)
        after = retry_after(state.outcome.exception() if state.outcome else None)
        return delay if after is None else max(after, delay / 2)

    def _sleep(self, seconds: float) -> None:
        if self._closed.wait(seconds):
            raise KubeError("the Kubernetes runner is closed")

    @staticmethod
    def _log_retry(what: str, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.info("%s: %s; trying again in %.2fs", what, describe(error) if error else "?", delay)

    def _timeout(self) -> float:
        return self.cfg.request_timeout

    # -- Jobs ------------------------------------------------------------------

    def create_job(self, manifest: Obj) -> Obj:
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        body = check_job(manifest)
        return self._call(
            f"create Job {namespace}/{name}",
            lambda: _json(
                self.batch.create_namespaced_job(
                    namespace, body, _preload_content=False, _request_timeout=self._timeout()
                )
            ),
        )

    def read_job(self, namespace: str, name: str) -> Obj | None:
        try:
            return self._call(
                f"read Job {namespace}/{name}",
                lambda: _json(
                    self.batch.read_namespaced_job(
                        name, namespace, _preload_content=False, _request_timeout=self._timeout()
                    )
                ),
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(
        self, namespace: str, *, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        """The matching Jobs and the list's resourceVersion (to watch from)."""
        listed = self._call(
            f"list Jobs in {namespace}",
            lambda: _json(
                self.batch.list_namespaced_job(
                    namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    _preload_content=False,
                    _request_timeout=self._timeout(),
                )
            ),
        )
        return list(listed.get("items") or []), str(listed["metadata"]["resourceVersion"])

    def delete_job(self, namespace: str, name: str, propagation: str = "Background") -> bool:
        """Delete the Job and (by ``propagation``) its pods; False if it was gone already."""
        try:
            self._call(
                f"delete Job {namespace}/{name}",
                lambda: _json(  # read, so the connection goes back to the pool
                    self.batch.delete_namespaced_job(
                        name,
                        namespace,
                        propagation_policy=propagation,
                        _preload_content=False,
                        _request_timeout=self._timeout(),
                    )
                ),
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch_job(
        self, namespace: str, name: str, resource_version: str, stopper: WatchStopper, done: Callable[[Obj], bool]
    ) -> tuple[Obj | None, str]:
        """Watch one Job from ``resource_version`` until ``done(job)``, the Job is deleted (returned
        with ``deleted`` set), or the server ends the watch after ``watch_seconds``: then (None, the
        last resourceVersion seen). Not retried: a 410 (the version is too old) raises KubeError(410),
        to be answered by listing again; other errors raise too."""
        w = kube_watch.Watch()
        stopper.attach(w)
        rv = resource_version
        if stopper.stopped:
            return None, rv
        try:
            for event in w.stream(
                self.batch.list_namespaced_job,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.cfg.watch_seconds,
                _request_timeout=(self.cfg.request_timeout, self.cfg.watch_seconds + self.cfg.request_timeout),
            ):
                obj = event["raw_object"]
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if event["type"] == "DELETED":
                    return {**obj, "deleted": True}, rv
                if event["type"] in ("ADDED", "MODIFIED") and done(obj):
                    return obj, rv
                if stopper.stopped:
                    break
        except ApiException as exc:
            raise KubeError(f"watch Job {namespace}/{name}: {describe(exc)}", exc.status) from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ValueError) as exc:
            if stopper.stopped:
                return None, rv
            raise KubeError(f"watch Job {namespace}/{name}: {describe(exc)}") from None
        return None, rv

    # -- pods ------------------------------------------------------------------

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        listed = self._call(
            f"list pods in {namespace}",
            lambda: _json(
                self.core.list_namespaced_pod(
                    namespace, label_selector=label_selector, _preload_content=False, _request_timeout=self._timeout()
                )
            ),
        )
        return list(listed.get("items") or [])

    def pod_log(self, namespace: str, pod: str, container: str, lines: int) -> str:
        response: Any = self._call(
            f"read the log of pod {namespace}/{pod}",
            lambda: self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                tail_lines=lines,
                _preload_content=False,
                _request_timeout=self._timeout(),
            ),
        )
        return str(response.data.decode("utf-8", "replace"))


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data)
    return data
