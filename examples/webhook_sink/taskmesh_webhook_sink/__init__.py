"""A taskmesh event sink: POSTs every lifecycle event as JSON to a URL, signed with HMAC-SHA256.

Enable it with ``sinks = ["webhook"]`` (or ``TASKMESH_SINKS=webhook``) and configure it with:

- ``TASKMESH_WEBHOOK_URL``: where to POST (``http://`` or ``https://``);
- ``TASKMESH_WEBHOOK_SECRET``: the HMAC key; each request carries
  ``X-Taskmesh-Signature: sha256=<hex HMAC-SHA256 of the body>``;
- ``TASKMESH_WEBHOOK_RETRIES`` (3) and ``TASKMESH_WEBHOOK_TIMEOUT`` (5 seconds).

The body is the event (``{"id", "queue", "event", "job", "task", ...}``); ``X-Taskmesh-Event-Id`` repeats
its id, so a receiver can drop the duplicates at-least-once delivery may bring. Connection errors, 429 and
5xx answers are retried with exponential backoff (0.2 s, 0.4 s, ...); other 4xx answers are not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from taskmesh import ConfigurationError, Event, Settings, hookimpl
from taskmesh.sinks import SinkRegistry

SIGNATURE_HEADER = "X-Taskmesh-Signature"
EVENT_HEADER = "X-Taskmesh-Event-Id"
BACKOFF = 0.2


class WebhookError(Exception):
    """The receiver refused the event, or could not be reached after the retries."""


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256 digest."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, settings: Settings) -> None:
        self.url = os.environ.get("TASKMESH_WEBHOOK_URL", "")
        secret = os.environ.get("TASKMESH_WEBHOOK_SECRET", "")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ConfigurationError("the webhook sink needs TASKMESH_WEBHOOK_URL, an http:// or https:// URL")
        if not secret:
            raise ConfigurationError("the webhook sink needs TASKMESH_WEBHOOK_SECRET, the key requests are signed with")
        self.secret = secret.encode()
        try:
            self.retries = int(os.environ.get("TASKMESH_WEBHOOK_RETRIES", "3"))
            self.timeout = float(os.environ.get("TASKMESH_WEBHOOK_TIMEOUT", "5"))
        except ValueError as exc:
            raise ConfigurationError(f"webhook sink: {exc}") from None

    async def emit(self, event: Event) -> None:
        body = json.dumps(event.to_dict(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        headers[EVENT_HEADER] = event.id
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                status = await asyncio.to_thread(self._post, body, headers)
            except OSError as exc:
                failure = f"{exc}"
                continue
            if status < 300:
                return
            failure = f"answered {status}"
            if status < 500 and status != 429:
                break
        raise WebhookError(f"POST {self.url} for event {event.id}: {failure}")

    def _post(self, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async def close(self) -> None:
        pass


@hookimpl
def taskmesh_register_sinks(register: SinkRegistry) -> None:
    register.add("webhook", WebhookSink)
