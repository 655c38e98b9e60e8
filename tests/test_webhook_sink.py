"""The example webhook sink against real HTTP servers on 127.0.0.1: what it signs, what counts as delivered,
that it never follows a redirect, and that the secrets of its URL stay out of errors and logs."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from taskmesh_webhook_sink import WebhookError, WebhookSink, mask_url, verify

from taskmesh import Client, ConfigurationError, Event, Registry, Settings, Worker, task
from taskmesh.testing import RunningWorker, wait_until

BOUND = 10.0
SECRET = "s3cret"
EVENT = Event(id="1700000000000-0", queue="default", name="completed", job_id="j1", data={"task": "ex.double"})
#: Parts of a URL that must never be shown: user, password, path, query values.
HIDDEN = ("al1ce", "s3cr3tpw", "T0KENPATH", "qu3rytok", "k3yv4l")


@task(name="webhook.double")
def double(x: int) -> int:
    return 2 * x


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = int | tuple[int, dict[str, str]]
Serve = Callable[..., tuple[str, list[Received]]]


class Recorder(BaseHTTPRequestHandler):
    """Records every request; answers with ``answers`` in turn, the last one for the rest."""

    received: list[Received]
    answers: tuple[Answer, ...]

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append(Received(self.command, self.path, dict(self.headers), body))
        answer = self.answers[min(len(self.received), len(self.answers)) - 1]
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_HEAD = answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """``serve(*answers)`` starts a recording server; returns its URL (``/hooks``) and what it received."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(*answers: Answer) -> tuple[str, list[Received]]:
        received: list[Received] = []
        handler = type("Handler", (Recorder,), {"received": received, "answers": answers})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}/hooks", received

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(BOUND)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], WebhookSink]:
    def make(url: str) -> WebhookSink:
        monkeypatch.setenv("TASKMESH_WEBHOOK_URL", url)
        monkeypatch.setenv("TASKMESH_WEBHOOK_SECRET", SECRET)
        monkeypatch.setenv("TASKMESH_WEBHOOK_RETRIES", "1")
        return WebhookSink(Settings())

    return make


def emit(sink: WebhookSink, event: Event = EVENT) -> None:
    asyncio.run(asyncio.wait_for(sink.emit(event), BOUND))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_each_attempt_signs_a_timestamp_with_the_body_and_verify_refuses_a_replay(
    serve: Serve, sink: Callable[[str], WebhookSink]
) -> None:
    from taskmesh_webhook_sink import InvalidSignature

    url, received = serve(500, 200)
    before = int(time.time())
    emit(sink(url))
    after = int(time.time())
    assert [r.method for r in received] == ["POST", "POST"], "the 500 was retried"
    for request in received:
        header = request.headers["X-Taskmesh-Signature"]
        stamp, digest = (part.partition("=")[2] for part in header.split(","))
        assert header == f"t={stamp},v1={digest}" and before <= int(stamp) <= after
        assert digest == hmac.new(SECRET.encode(), f"{stamp}.".encode() + request.body, sha256).hexdigest()
        assert verify(SECRET.encode(), header, request.body) == int(stamp)
    header, body = received[-1].headers["X-Taskmesh-Signature"], received[-1].body
    signed = int(header.split(",")[0][2:])
    assert verify(SECRET.encode(), header, body, now=signed + 299) == signed
    with pytest.raises(InvalidSignature, match="replayed"):
        verify(SECRET.encode(), header, body, now=signed + 301)
    with pytest.raises(InvalidSignature, match="replayed"):
        verify(SECRET.encode(), header, body, now=signed - 301)
    refused = {
        "another body": (header, body + b" "),
        "another secret": (header.replace(digest, hmac.new(b"x", body, sha256).hexdigest()), body),
        "a moved timestamp": (header.replace(f"t={signed}", f"t={signed + 60}"), body),
        "the old header without a timestamp": ("sha256=" + hmac.new(SECRET.encode(), body, sha256).hexdigest(), body),
        "no header": ("", body),
        "a huge header": ("t=1," + "v1=0," * 10_000, body),
    }
    for case, (bad_header, bad_body) in refused.items():
        with pytest.raises(InvalidSignature):
            verify(SECRET.encode(), bad_header, bad_body)
            pytest.fail(f"{case} was accepted")


class DocumentedReceiver:
    """A receiver as :func:`verify`'s docstring says: check the signature, then drop repeats by the signed
    body's ``"id"``."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def accept(self, headers: dict[str, str], body: bytes) -> bool:
        verify(SECRET.encode(), headers["X-Taskmesh-Signature"], body)
        event_id = json.loads(body)["id"]
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        return True


def test_a_replay_within_the_window_with_another_event_id_header_is_dropped_by_the_documented_receiver(
    serve: Serve, sink: Callable[[str], WebhookSink]
) -> None:
    doc = " ".join((verify.__doc__ or "").split())
    assert 'by the signed body\'s "id"' in doc and "X-Taskmesh-Event-Id header is not signed" in doc
    url, received = serve(200)
    emit(sink(url))
    [request] = received
    receiver = DocumentedReceiver()
    assert receiver.accept(request.headers, request.body)
    replayed = {**request.headers, "X-Taskmesh-Event-Id": "1799999999999-0"}
    verify(SECRET.encode(), replayed["X-Taskmesh-Signature"], request.body)  # the header is not signed: it passes
    assert not receiver.accept(replayed, request.body), "the replay is dropped as a repeat"


@pytest.mark.parametrize(
    "url",
    [
        "https://al1ce:4242/s3cr3tpw@hooks.example.com/T0KENPATH",
        "https://al1ce:4242?s3cr3tpw@hooks.example.com/T0KENPATH",
        "https://al1ce:4242#s3cr3tpw@hooks.example.com/T0KENPATH",
        "https://al1ce:s3/cr3tpw@hooks.example.com:8443/T0KENPATH?token=qu3rytok",
        "https://al1ce/x:s3cr3tpw@hooks.example.com/T0KENPATH",
    ],
)
def test_a_url_with_an_unencoded_slash_question_mark_or_hash_before_its_at_is_refused_unshown(
    sink: Callable[[str], WebhookSink], url: str
) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as refused:
        sink(url)
    for text in (str(refused.value), mask_url(url)):
        assert not [part for part in (*HIDDEN, "4242", "s3") if part in text], text


def test_a_percent_encoded_password_and_an_at_in_a_query_value_reach_the_configured_host(
    serve: Serve, sink: Callable[[str], WebhookSink]
) -> None:
    url, received = serve(200)
    port = url.split(":")[2].split("/")[0]
    made = sink(f"http://al1ce:4242%2Fs3cr3tpw%3F%23@127.0.0.1:{port}/hooks/%40T0KENPATH?email=a@b.example")
    assert repr(made) == f"WebhookSink(url='http://***@127.0.0.1:{port}/***?***')"
    emit(made)
    [request] = received
    assert request.path == "/hooks/%40T0KENPATH?email=a@b.example"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"al1ce:4242/s3cr3tpw?#").decode()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_fails_the_event(
    serve: Serve, sink: Callable[[str], WebhookSink], status: int
) -> None:
    elsewhere, stolen = serve(200)
    url, received = serve((status, {"Location": elsewhere + "/T0KENPATH?sig=qu3rytok"}))
    with pytest.raises(WebhookError) as caught:
        emit(sink(url))
    assert stolen == [], "nothing, and above all no signed request, reaches the redirect's target"
    assert len(received) == 1, "a redirect is a refusal: not retried"
    target = elsewhere.rpartition("/")[0] + "/***?***"
    assert str(caught.value) == (
        f"POST {url.rpartition('/')[0]}/*** for event {EVENT.id}: answered {status}, a redirect to {target}; "
        "redirects are not followed (set TASKMESH_WEBHOOK_URL to the final address)"
    )


@pytest.mark.parametrize(
    ("status", "delivered"),
    [(101, False), (199, False), (200, True), (204, True), (299, True), (304, False), (404, False)],
)
def test_only_a_2xx_answer_counts_as_delivered(
    serve: Serve, sink: Callable[[str], WebhookSink], status: int, delivered: bool
) -> None:
    url, received = serve(status)
    if delivered:
        emit(sink(url))
    else:
        with pytest.raises(WebhookError, match=f": answered {status}"):
            emit(sink(url))
    assert len(received) == 1, "none of these is retried"


def test_the_urls_user_password_path_and_query_never_reach_an_error_or_the_repr(
    serve: Serve, sink: Callable[[str], WebhookSink]
) -> None:
    url, received = serve(404)
    port = url.split(":")[2].split("/")[0]
    made = sink(f"http://al1ce:s3cr3tpw@127.0.0.1:{port}/hooks/T0KENPATH?token=qu3rytok&key=k3yv4l")
    shown = f"http://***@127.0.0.1:{port}/***?***"
    assert repr(made) == f"WebhookSink(url={shown!r})"
    with pytest.raises(WebhookError) as refused:
        emit(made)
    assert str(refused.value) == f"POST {shown} for event {EVENT.id}: answered 404"
    [request] = received
    assert request.path == "/hooks/T0KENPATH?token=qu3rytok&key=k3yv4l", "the real URL is the one requested"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"al1ce:s3cr3tpw").decode()
    unreachable = sink(f"http://al1ce:s3cr3tpw@127.0.0.1:{closed_port()}/T0KENPATH?token=qu3rytok&key=k3yv4l")
    with pytest.raises(WebhookError) as lost:
        emit(unreachable)
    assert "Connection refused" in str(lost.value)
    for text in (repr(made), str(refused.value), repr(unreachable), str(lost.value)):
        assert not [part for part in HIDDEN if part in text], text


def test_a_worker_logs_a_failing_webhook_without_the_urls_secrets(
    taskmesh_client: Client,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, received = serve(403)
    port = url.split(":")[2].split("/")[0]
    monkeypatch.setenv("TASKMESH_WEBHOOK_URL", f"http://al1ce:s3cr3tpw@127.0.0.1:{port}/T0KENPATH?token=qu3rytok")
    monkeypatch.setenv("TASKMESH_WEBHOOK_SECRET", SECRET)
    cfg = taskmesh_client.settings.replace(queues=("default",), sinks=("webhook",))
    worker = RunningWorker(Worker.create(Registry([double]), cfg)).start()
    try:
        assert double.enqueue(2).result(timeout=BOUND) == 4
        wait_until(lambda: len(received) == 3, timeout=BOUND, message="three events posted and refused")
    finally:
        worker.stop(timeout=BOUND)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "event sink webhook" in r.getMessage()]
    assert warnings and f"POST http://***@127.0.0.1:{port}/***?*** for event " in warnings[0].getMessage()
    logged = "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])
    assert not [part for part in HIDDEN if part in logged]
