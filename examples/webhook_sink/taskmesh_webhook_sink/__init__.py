"""A taskmesh event sink: POSTs every lifecycle event as JSON to a URL, signed with HMAC-SHA256.

Enable it with ``sinks = ["webhook"]`` (or ``TASKMESH_SINKS=webhook``) and configure it (its
:class:`WebhookSettings`, declared through the ``taskmesh_declare_settings`` hook) in ``[tool.taskmesh.webhook]``
of pyproject.toml or with environment variables, which win:

- ``url``, ``TASKMESH_WEBHOOK_URL``: where to POST (``http://`` or ``https://``); a ``user:password@`` in it is
  sent as HTTP Basic authentication, and must have ``/``, ``?`` and ``#`` percent-encoded (``%2F``,
  ``%3F``, ``%23``): a URL parser ends the host at the first of them, so an unencoded one would make part
  of the password the host and port. A URL with an ``@`` after any of them is refused at start-up (an
  ``@`` in the path is written ``%40``);
- ``secret``, ``TASKMESH_WEBHOOK_SECRET``: the HMAC key (keep it out of pyproject.toml: use the variable);
- ``retries``, ``TASKMESH_WEBHOOK_RETRIES`` (3) and ``timeout``, ``TASKMESH_WEBHOOK_TIMEOUT`` (5 seconds).

The body is the event (``{"id", "queue", "event", "job", "task", ...}``); a receiver drops the duplicates
at-least-once delivery may bring by its ``"id"``. ``X-Taskmesh-Event-Id`` repeats the id for logs and
routing, but is not signed: never dedupe on it (a replay may change it).

**Signature.** Each request carries ``X-Taskmesh-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>``
is the HMAC-SHA256 of ``<t>.<body>`` (the timestamp, a dot, the raw body) under the secret. The
timestamp is signed with the body, so a receiver that refuses a ``t`` more than a few minutes from its
own clock refuses a captured request replayed later; within that window it drops repeats by the signed
body's ``"id"``.
:func:`verify` does the check (300 s either way by default). Every attempt is signed afresh.

**Delivery.** An event counts as delivered only on a 2xx answer. Connection errors, 429 and 5xx answers
are retried with exponential backoff (0.2 s, 0.4 s, ...); any other answer fails the event at once:
4xx, 1xx, and 3xx, as redirects are never followed (a redirect would carry the signed event to an
address nobody configured: set the URL to the final address instead). A failed event raises
:class:`WebhookError`, which the event bus counts (``sink_errors``) and logs.

**Secrets stay out of logs.** The URL in errors, logs and ``repr`` shows its scheme, host and port
only: a user and password, the path (some services put their token there) and the query show as
``***``. So does a redirect's ``Location``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

from taskmesh import Backoff, ConfigurationError, Event, Settings, hookimpl
from taskmesh.plugins import PluginSettingsRegistry, plugin_settings
from taskmesh.sinks import SinkRegistry

#: The sink's name, and its settings' (``[tool.taskmesh.webhook]``, ``TASKMESH_WEBHOOK_*``).
NAME = "webhook"
SIGNATURE_HEADER = "X-Taskmesh-Signature"
EVENT_HEADER = "X-Taskmesh-Event-Id"
#: Waits between a failed post and the next (0.2 s, doubling, at most 30 s).
BACKOFF = Backoff(base=0.2, factor=2.0, cap=30.0, jitter=0.0)
#: How far (seconds, either way) :func:`verify` lets a signature's timestamp be from the receiver's clock.
TOLERANCE = 300.0
#: A signature header longer than this is refused unread by :func:`verify`.
MAX_HEADER = 1024


class WebhookError(Exception):
    """The receiver refused the event, or could not be reached after the retries."""


class InvalidSignature(ValueError):
    """:func:`verify` refused a request: answer it with 400 (or 401) and do not act on its body."""


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds): ``t=<timestamp>,v1=<hex
    HMAC-SHA256 of "<timestamp>." + body>``."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify(secret: bytes, header: str, body: bytes, *, tolerance: float = TOLERANCE, now: float | None = None) -> int:
    """For receivers: check a request's ``X-Taskmesh-Signature`` ``header`` against its raw ``body`` (the
    bytes as received, before any JSON parsing) and return the signed timestamp.

    Raises :class:`InvalidSignature` when the header is not ``t=<digits>,v1=<hex>``, when no ``v1``
    matches (compared in constant time; several ``v1`` are allowed, for a change of secret), or when ``t``
    is more than ``tolerance`` seconds from ``now`` (default: this machine's clock), which is how a
    replayed request is refused. A request that passes may still be a repeat within the window (a replay,
    or at-least-once delivery): drop those by the signed body's "id" (``json.loads(body)["id"]``), which
    a replay cannot change. The X-Taskmesh-Event-Id header is not signed: do not dedupe on it.
    """
    if not isinstance(header, str) or len(header) > MAX_HEADER:
        raise InvalidSignature("no signature header, or one too long")
    timestamps, signatures = [], []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit() or len(timestamps[0]) > 12:
        raise InvalidSignature("the signature header needs one t=<unix seconds>")
    timestamp = int(timestamps[0])
    expected = _digest(secret, body, timestamp)
    if not any(hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")) for sig in signatures):
        raise InvalidSignature("no v1 signature matches the body: check the secret, and sign the raw body")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise InvalidSignature(f"the signature's timestamp is more than {tolerance:g} s from now: replayed or late")
    return timestamp


def _digest(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def _split(url: str) -> SplitResult | None:
    """``url``'s parts, or None when its host or port cannot be read."""
    try:
        parts = urlsplit(url)
        _ = parts.hostname, parts.port
    except ValueError:
        return None
    return parts


def _host_unclear(url: str) -> bool:
    """Whether ``url`` has an ``@`` (outside query values) after a ``/``, ``?`` or ``#``: a URL parser ends
    the host at the first of those, so in ``https://alice:4242/xyz@hooks.example.com/`` it reads host
    ``alice`` and port ``4242``, while whoever wrote it meant a password holding ``/`` (or ``@`` in a path)."""
    rest = url.partition("://")[2]
    query = rest.find("?")
    values = rest.find("=", query) if query >= 0 else -1
    at = rest.rfind("@", 0, values if values >= 0 else len(rest))
    return at >= 0 and any(char in rest[:at] for char in "/?#")


def mask_url(url: str) -> str:
    """``url`` fit for a log: scheme, host and port; ``***`` for a user and password, the path and the query."""
    parts = None if _host_unclear(url) else _split(url)
    if parts is None:
        return "<an invalid URL>"
    host, port = parts.hostname or "", parts.port
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if "@" in parts.netloc else "") + host[:100] + (f":{port}" if port is not None else "")
    path = "/***" if parts.path.strip("/") else parts.path[:1]
    return urlunsplit((parts.scheme[:10], netloc, path, "***" if parts.query else "", ""))


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The webhook sink's settings: ``[tool.taskmesh.webhook]``, ``TASKMESH_WEBHOOK_<NAME>``."""

    #: Where to POST; ``taskmesh config`` shows its scheme, host and port only.
    url: str = field(default="", metadata={"mask": mask_url})
    #: The HMAC key requests are signed with.
    secret: str = field(default="", metadata={"secret": True})
    #: Retries of a connection error, 429 or 5xx, with exponential backoff.
    retries: int = 3
    #: Seconds each request may take.
    timeout: float = 5.0


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx comes back as an HTTPError, like any other answer that is not a 2xx."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSink:
    def __init__(self, settings: Settings) -> None:
        config = plugin_settings(NAME, WebhookSettings, settings)
        self.url, secret = config.url, config.secret
        self.shown_url = mask_url(self.url)
        if _host_unclear(self.url):
            raise ConfigurationError(
                "TASKMESH_WEBHOOK_URL has an '@' after a '/', '?' or '#', so its host cannot be told from its "
                "password: percent-encode '/', '?' and '#' in the user name and password (%2F, %3F, %23; '%' "
                "itself as %25), and an '@' in the path as %40"
            )
        parts = _split(self.url)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                "the webhook sink needs TASKMESH_WEBHOOK_URL (or url in [tool.taskmesh.webhook]), an http:// or "
                "https:// URL"
            )
        if not secret:
            raise ConfigurationError(
                "the webhook sink needs TASKMESH_WEBHOOK_SECRET (or secret in [tool.taskmesh.webhook]), the key "
                "requests are signed with"
            )
        self.secret = secret.encode()
        self.retries, self.timeout = config.retries, config.timeout
        # urllib would take user:password@ for part of the host name: sent as a header instead.
        self._target = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], fragment=""))
        self._auth: dict[str, str] = {}
        if "@" in parts.netloc:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self._auth["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        secrets = [parts.netloc.rpartition("@")[0], parts.username, parts.password, parts.path, parts.query]
        self._secrets = sorted({s for s in secrets if s and len(s) > 3}, key=len, reverse=True)
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.shown_url!r})"

    async def emit(self, event: Event) -> None:
        body = json.dumps(event.to_dict(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: event.id, **self._auth}
        failure = "not sent"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF.delay(attempt))
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
            try:
                status, location = await asyncio.to_thread(self._post, body, headers)
            except (OSError, http.client.HTTPException) as exc:  # no answer, or not an HTTP one
                failure = self._scrub(f"{exc!r:.300}")
                continue
            if 200 <= status < 300:
                return
            failure = self._refusal(status, location)
            if status != 429 and status < 500:
                break
        raise WebhookError(f"POST {self.shown_url} for event {event.id}: {failure}")

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        """POST once; the status and, for a redirect, where to (never followed)."""
        request = urllib.request.Request(self._target, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return int(response.status), None
        except urllib.error.HTTPError as exc:  # any answer but a 2xx
            try:
                return int(exc.code), exc.headers.get("Location") if exc.headers else None
            finally:
                exc.close()

    def _refusal(self, status: int, location: str | None) -> str:
        if 300 <= status < 400:
            where = mask_url(urljoin(self._target, location)) if location else "nowhere"
            return (
                f"answered {status}, a redirect to {where}; redirects are not followed "
                "(set TASKMESH_WEBHOOK_URL to the final address)"
            )
        return f"answered {status}" if status >= 400 else f"answered {status}, not a 2xx"

    def _scrub(self, text: str) -> str:
        """``text`` with the URL's secret parts masked, should an error quote them."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def close(self) -> None:
        pass


@hookimpl
def taskmesh_declare_settings(register: PluginSettingsRegistry) -> None:
    register.add(NAME, WebhookSettings)


@hookimpl
def taskmesh_register_sinks(register: SinkRegistry) -> None:
    register.add(NAME, WebhookSink)
