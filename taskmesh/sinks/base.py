"""The Sink contract and the registry plugins add sinks to."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigurationError
from ..store.keys import check_name

if TYPE_CHECKING:
    from ..events import Event
    from ..settings import Settings


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


SinkFactory = Callable[["Settings"], Sink]


class SinkRegistry:
    """Passed to ``taskmesh_register_sinks``: collects sink factories by name."""

    def __init__(self) -> None:
        self.factories: dict[str, SinkFactory] = {}

    def add(self, name: str, factory: SinkFactory) -> None:
        try:
            check_name("sink name", name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if name in self.factories:
            raise ConfigurationError(f"two plugins register a sink named {name!r}")
        self.factories[name] = factory

    def build(self, settings: Settings, enabled: Iterable[str]) -> dict[str, Sink]:
        """Build the sinks the ``sinks`` setting enables; an unknown name is a start-up error listing the known ones."""
        names = list(dict.fromkeys(enabled))
        unknown = [name for name in names if name not in self.factories]
        if unknown:
            known = ", ".join(sorted(self.factories)) or "none"
            raise ConfigurationError(f"unknown sink(s) {', '.join(unknown)} in the sinks setting; known sinks: {known}")
        return {name: self.factories[name](settings) for name in names}
