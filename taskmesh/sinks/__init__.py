"""Event sinks: where a worker sends every lifecycle event (see ``bus.py`` for how they get there)."""

from .base import Sink, SinkRegistry

__all__ = ["Sink", "SinkRegistry"]
