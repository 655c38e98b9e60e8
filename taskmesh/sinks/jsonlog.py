"""The built-in ``log`` sink: every event as one JSON object on the ``taskmesh.events`` logger."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..plugins import hookimpl

if TYPE_CHECKING:
    from ..events import Event
    from ..settings import Settings
    from .base import SinkRegistry


class LogSink:
    """Logs each event at INFO as compact JSON (``{"id", "queue", "event", "job", ...data}``).

    The message is the JSON text alone; a handler with ``format="%(message)s"`` makes the output JSON lines.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger("taskmesh.events")

    async def emit(self, event: Event) -> None:
        self.logger.info("%s", json.dumps(event.to_dict(), separators=(",", ":")))

    async def close(self) -> None:
        pass


@hookimpl
def taskmesh_register_sinks(register: SinkRegistry) -> None:
    register.add("log", LogSink)
