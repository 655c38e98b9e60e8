"""A small fake Kubernetes API server for the ``k8s`` runner's tests, spoken to by the real client over HTTP.

It serves what the runner uses: ``batch/v1`` namespaced Jobs (create, get, list with label and field
selectors, delete, watch from a resourceVersion with ``410 Gone`` for compacted versions) and ``core/v1``
Pods (list by label selector, logs). A created Job "runs" its pod as a local subprocess of the container's
command (``python`` is this interpreter) with the container's environment, Secrets and ConfigMaps resolved
from :attr:`FakeKubernetes.secrets` / :attr:`config_maps`; its exit decides ``Complete`` or ``Failed``, and
``activeDeadlineSeconds`` is enforced. Every created manifest is validated against the Kubernetes schemas
(``kubernetes-validate``, strict) plus the API server's name and label rules: an invalid one is answered 422
and kept in :attr:`invalid`. Faults are injected with :meth:`fault`. Loopback only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

K8S_VERSION = "1.33.0"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
JOBS = re.compile(r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?")
PODS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)/log)?")

Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def label_problems(labels: Any) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not LABEL_NAME.fullmatch(name) or (prefix and not re.fullmatch(r"[a-z0-9.-]+", prefix)):
            problems.append(f"invalid label key {key!r}")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            problems.append(f"invalid label value {key}={value!r}")
    return problems


def matches(obj: Obj, label_selector: str | None, field_selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (label_selector or "").split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key) != value:
            return False
    for term in filter(None, (field_selector or "").split(",")):
        key, _, value = term.partition("=")
        if key != "metadata.name":
            raise ValueError(f"field selector {key} is not supported")
        if obj["metadata"]["name"] != value:
            return False
    return True


@dataclass
class Fault:
    """Answer matching requests (method, and a regex searched in path + query) ``times`` times with
    ``code`` (and ``Retry-After``), or by closing the connection (``drop``) before or after applying it
    (``apply``); a watch with ``event`` gets a 200 stream holding one ERROR event with ``code`` instead.
    With ``stall`` the request is answered normally, after that many seconds."""

    method: str
    pattern: str
    times: int = 1
    code: int = 500
    retry_after: int | None = None
    message: str = "injected fault"
    drop: bool = False
    apply: bool = False
    event: bool = False
    stall: float = 0.0
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return self.method == method and self.hits < self.times and re.search(self.pattern, target) is not None


@dataclass
class Run:
    """A Job's pod and the process standing in for it."""

    pod: Obj
    process: subprocess.Popen[bytes] | None = None
    log: bytearray = field(default_factory=bytearray)
    killed: bool = False


class FakeKubernetes:
    """The fake API server. Use as a context manager; :meth:`write_kubeconfig` points the client at it."""

    def __init__(self, pod_env: dict[str, str] | None = None, *, run_pods: bool = True) -> None:
        self.pod_env = pod_env or {}
        self.run_pods = run_pods
        self.jobs: dict[tuple[str, str], Obj] = {}
        self.runs: dict[tuple[str, str], Run] = {}  # by Job
        self.history: list[tuple[int, str, str, Obj]] = []  # (resourceVersion, namespace, event type, Job)
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.created: list[str] = []  # names of Jobs created (not counting refused creates)
        self.conflicts: list[str] = []  # names of creates answered 409
        self.deleted: list[tuple[str, str, str | None]] = []  # (namespace, name, propagationPolicy)
        self.invalid: list[str] = []
        self.requests: list[tuple[float, str, str]] = []  # (time.monotonic(), method, path and query)
        self.faults: list[Fault] = []
        #: Called (outside the lock) with each created Job, before its pod starts.
        self.on_create: Callable[[Obj], None] | None = None
        self._version = 100
        self._compacted = 0
        self._cond = threading.Condition()
        self._closing = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-k8s", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            runs = list(self.runs.values())
        for run in runs:
            self._kill(run)
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def fault(self, method: str, pattern: str, **kwargs: Any) -> Fault:
        fault = Fault(method, pattern, **kwargs)
        with self._cond:
            self.faults.append(fault)
        return fault

    def expire_history(self) -> None:
        """Compact every resourceVersion seen so far: a watch from one of them gets 410 Gone."""
        with self._cond:
            self._compacted = self._version

    def job(self, namespace: str, name: str) -> Obj | None:
        with self._cond:
            return self.jobs.get((namespace, name))

    def pods_started(self) -> int:
        with self._cond:
            return sum(run.process is not None for run in self.runs.values())

    # -- state changes (call under the lock) ---------------------------------------

    def _event(self, kind: str, obj: Obj) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self.history.append((self._version, obj["metadata"]["namespace"], kind, json.loads(json.dumps(obj))))
        self._cond.notify_all()

    # -- Jobs --------------------------------------------------------------------------

    def create_job(self, namespace: str, body: Obj) -> tuple[int, Obj]:
        problems = self._validate(namespace, body)
        if problems:
            self.invalid.append("; ".join(problems))
            return 422, status(422, "Invalid", f"Job is invalid: {'; '.join(problems)}")
        name = body["metadata"]["name"]
        with self._cond:
            if (namespace, name) in self.jobs:
                self.conflicts.append(name)
                return 409, status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            job = json.loads(json.dumps(body))
            job["metadata"].update(uid=secrets.token_hex(8), creationTimestamp=now(), generation=1)
            job["status"] = {}
            self.jobs[(namespace, name)] = job
            self.created.append(name)
            self._event("ADDED", job)
            created = json.loads(json.dumps(job))
        if self.on_create is not None:
            self.on_create(created)
        if self.run_pods:
            threading.Thread(target=self._run, args=(namespace, name), name=f"fake-pod-{name}", daemon=True).start()
        return 201, created

    def _validate(self, namespace: str, body: Obj) -> list[str]:
        problems = []
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"schema: {where}: {exc.message}")
        metadata = body.get("metadata") or {}
        name = metadata.get("name") or ""
        if len(name) > 63 or not DNS_LABEL.fullmatch(name):
            problems.append(f"metadata.name {name!r} is not a DNS-1123 label of at most 63 characters")
        if metadata.get("namespace") not in (None, namespace):
            problems.append("metadata.namespace does not match the request")
        problems += label_problems(metadata.get("labels"))
        template = (body.get("spec") or {}).get("template") or {}
        problems += label_problems((template.get("metadata") or {}).get("labels"))
        if (template.get("spec") or {}).get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append("spec.template.spec.restartPolicy must be Never or OnFailure for a Job")
        return problems

    def delete_job(self, namespace: str, name: str, propagation: str | None) -> tuple[int, Obj]:
        with self._cond:
            job = self.jobs.pop((namespace, name), None)
            if job is None:
                return 404, status(404, "NotFound", f'jobs.batch "{name}" not found')
            self._event("DELETED", job)
            run = self.runs.get((namespace, name))
        if run is not None:  # the pod goes too (at once, whatever the propagation policy)
            self._kill(run)
        with self._cond:
            self.deleted.append((namespace, name, propagation))
        return 200, status(200, "Success", "deleted") | {"status": "Success"}

    def list_jobs(self, namespace: str, labels: str | None, fields: str | None) -> Obj:
        with self._cond:
            items = [
                json.loads(json.dumps(job))
                for (ns, _), job in sorted(self.jobs.items())
                if ns == namespace and matches(job, labels, fields)
            ]
            version = str(self._version)
        return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": version}, "items": items}

    def watch(self, namespace: str, query: dict[str, str]) -> Iterator[Obj]:
        """Events after ``resourceVersion`` (or the current Jobs as ADDED), until ``timeoutSeconds``."""
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "30"))
        since = query.get("resourceVersion")
        with self._cond:
            if since and int(since) < self._compacted:
                yield {"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since}")}
                return
            if not since:
                for (ns, _), job in sorted(self.jobs.items()):
                    if ns == namespace and matches(job, labels, fields):
                        yield {"type": "ADDED", "object": json.loads(json.dumps(job))}
                since = str(self._version)
        last = int(since)
        while True:
            with self._cond:
                pending = [
                    e for e in self.history if e[0] > last and e[1] == namespace and matches(e[3], labels, fields)
                ]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closing:
                        return
                    self._cond.wait(min(remaining, 0.5))
                    continue
            for version, _, kind, obj in pending:
                last = version
                yield {"type": kind, "object": obj}

    # -- pods ------------------------------------------------------------------------------

    def _run(self, namespace: str, name: str) -> None:
        with self._cond:
            job = self.jobs.get((namespace, name))
            if job is None:
                return
            template = job["spec"]["template"]
            container = template["spec"]["containers"][0]
            pod_name = f"{name[:57]}-{secrets.token_hex(2)}"
            labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": name}
            pod = {
                "metadata": {"name": pod_name, "namespace": namespace, "labels": labels, "creationTimestamp": now()},
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "containerStatuses": [{"name": container["name"], "state": {"running": {}}}],
                },
            }
            run = self.runs[(namespace, name)] = Run(pod)
            job["status"] = {"active": 1, "startTime": now()}
            self._event("MODIFIED", job)
            command = [sys.executable if c == "python" else c for c in container.get("command", [])]
            command += container.get("args", [])
            env = {"PATH": os.environ.get("PATH", ""), **self.pod_env, **self._env(namespace, container)}
            deadline = job["spec"].get("activeDeadlineSeconds")
            run.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert run.process.stdout is not None
        reader = threading.Thread(target=self._read, args=(run,), daemon=True)
        reader.start()
        try:
            code = run.process.wait(timeout=deadline)
            overdue = False
        except subprocess.TimeoutExpired:
            self._kill(run)
            code, overdue = run.process.wait(), True
        reader.join(timeout=5)
        self._finish(namespace, name, run, code, overdue)

    def _env(self, namespace: str, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                env.update(self.secrets[(namespace, source["secretRef"]["name"])])
            else:
                env.update(self.config_maps[(namespace, source["configMapRef"]["name"])])
        for item in container.get("env") or []:
            ref = item.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                env[item["name"]] = self.secrets[(namespace, ref["secretKeyRef"]["name"])][ref["secretKeyRef"]["key"]]
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                env[item["name"]] = self.config_maps[(namespace, key["name"])][key["key"]]
            else:
                env[item["name"]] = item.get("value", "")
        return env

    @staticmethod
    def _read(run: Run) -> None:
        assert run.process is not None and run.process.stdout is not None
        for chunk in iter(lambda: run.process.stdout.read1(65536), b""):  # type: ignore[union-attr]
            run.log.extend(chunk)

    def _kill(self, run: Run) -> None:
        run.killed = True
        if run.process is not None and run.process.poll() is None:
            run.process.send_signal(signal.SIGKILL)
            run.process.wait(timeout=10)

    def _finish(self, namespace: str, name: str, run: Run, code: int, overdue: bool) -> None:
        with self._cond:
            reason = "Completed" if code == 0 else "Error"
            run.pod["status"] = {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": run.pod["spec"]["containers"][0]["name"],
                        "state": {"terminated": {"exitCode": code, "reason": reason}},
                    }
                ],
            }
            job = self.jobs.get((namespace, name))
            if job is None:  # deleted meanwhile
                return
            stamp = now()
            if code == 0 and not overdue:
                job["status"] = {
                    "succeeded": 1,
                    "startTime": job["status"].get("startTime"),
                    "completionTime": stamp,
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
                        {"type": "Complete", "status": "True", "lastTransitionTime": stamp},
                    ],
                }
            else:
                why = (
                    ("DeadlineExceeded", "Job was active longer than specified deadline")
                    if overdue
                    else (
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    )
                )
                job["status"] = {
                    "failed": 1,
                    "startTime": job["status"].get("startTime"),
                    "conditions": [
                        {"type": "FailureTarget", "status": "True", "reason": why[0], "message": why[1]},
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": why[0],
                            "message": why[1],
                            "lastTransitionTime": stamp,
                        },
                    ],
                }
            self._event("MODIFIED", job)

    def list_pods(self, namespace: str, labels: str | None) -> Obj:
        with self._cond:
            items = [
                json.loads(json.dumps(run.pod))
                for (ns, _), run in self.runs.items()
                if ns == namespace and matches(run.pod, labels, None)
            ]
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def pod_log(self, namespace: str, pod: str, tail: int | None) -> bytes | None:
        with self._cond:
            run = next(
                (r for (ns, _), r in self.runs.items() if ns == namespace and r.pod["metadata"]["name"] == pod), None
            )
            if run is None:
                return None
            lines = bytes(run.log).splitlines(keepends=True)
        return b"".join(lines[-tail:] if tail else lines)

    # -- HTTP ----------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake._cond:
                    fake.requests.append((time.monotonic(), method, self.path))
                    fault = next((f for f in fake.faults if f.matches(method, self.path)), None)
                    if fault is not None:
                        fault.hits += 1
                if fault is not None and fault.stall:
                    time.sleep(fault.stall)
                    fault = None
                if fault is not None and fault.drop:
                    if fault.apply:
                        fake.route(method, self.path, body)
                    self.close_connection = True
                    return
                if fault is not None and fault.event:
                    self._stream(iter([{"type": "ERROR", "object": status(fault.code, "Expired", fault.message)}]))
                    return
                if fault is not None:
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    self._json(fault.code, status(fault.code, "Injected", fault.message), headers)
                    return
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                jobs = JOBS.fullmatch(parts.path)
                if method == "GET" and jobs and not jobs["name"] and query.get("watch") in ("true", "1", "True"):
                    self._stream(fake.watch(jobs["ns"], query))
                    return
                code, answer = fake.route(method, self.path, body)
                if isinstance(answer, bytes):
                    self._send(code, answer, "text/plain")
                else:
                    self._json(code, answer)

            def _json(self, code: int, obj: Obj, headers: dict[str, str] | None = None) -> None:
                self._send(code, json.dumps(obj).encode(), "application/json", headers)

            def _send(self, code: int, data: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, events: Iterator[Obj]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for event in events:
                        line = json.dumps(event).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away (its watch was stopped)
                    self.close_connection = True

        return Handler

    def route(self, method: str, target: str, body: Obj | None) -> tuple[int, Obj | bytes]:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        jobs, pods = JOBS.fullmatch(parts.path), PODS.fullmatch(parts.path)
        if jobs and method == "POST" and not jobs["name"] and body is not None:
            return self.create_job(jobs["ns"], body)
        if jobs and method == "GET" and not jobs["name"]:
            return 200, self.list_jobs(jobs["ns"], query.get("labelSelector"), query.get("fieldSelector"))
        if jobs and method == "GET":
            job = self.job(jobs["ns"], jobs["name"])
            return (200, job) if job else (404, status(404, "NotFound", f'jobs.batch "{jobs["name"]}" not found'))
        if jobs and method == "DELETE" and jobs["name"]:
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            return self.delete_job(jobs["ns"], jobs["name"], policy)
        if pods and method == "GET" and not pods["name"]:
            return 200, self.list_pods(pods["ns"], query.get("labelSelector"))
        if pods and method == "GET":
            log = self.pod_log(pods["ns"], pods["name"], int(query["tailLines"]) if "tailLines" in query else None)
            return (200, log) if log is not None else (404, status(404, "NotFound", f'pods "{pods["name"]}" not found'))
        return 404, status(404, "NotFound", f"the fake serves no {method} {parts.path}")
