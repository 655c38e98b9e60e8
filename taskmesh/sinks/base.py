"""The Sink contract and the registry plugins add sinks to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..factories import Factories

if TYPE_CHECKING:
    from ..events import Event


class Sink(Protocol):
    """Receives lifecycle events from the worker's event bus, one at a time, in stream order per queue."""

    async def emit(self, event: Event) -> None:
        """Handle one event. Take as long as needed: a slow sink only fills its own buffer.

        An exception is logged and counted (``WorkerStats.sink_errors``); the event is not offered again.
        """
        ...

    async def close(self) -> None:
        """Release resources when the worker stops."""
        ...


class SinkRegistry(Factories[Sink]):
    """Passed to ``taskmesh_register_sinks``: collects sink factories by name."""

    kind = "sink"
    source = " in the sinks setting"
