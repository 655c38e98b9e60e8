"""A taskmesh event sink that serves Prometheus metrics on ``/metrics``.

Enable it with ``sinks = ["prometheus"]`` (or ``TASKMESH_SINKS=prometheus``); it listens on ``addr``
(``127.0.0.1``) port ``port`` (9808; 0 picks a free one): its :class:`PrometheusSettings`, declared through
the ``taskmesh_declare_settings`` hook, read from ``TASKMESH_PROMETHEUS_ADDR`` and ``TASKMESH_PROMETHEUS_PORT``,
else from ``[tool.taskmesh.prometheus]`` of pyproject.toml.

- ``taskmesh_events_total{queue,task,event}``: lifecycle events seen (``completed``, ``failed``, ...).
- ``taskmesh_job_duration_seconds{queue,task,state}``: the last attempt's run time of finished jobs.
- ``taskmesh_queue_jobs{queue,state}``: jobs per state in the worker's queues, read from Redis at each scrape.

With several workers, the events are shared between them (each counts the events its bus delivered):
sum over instances, as usual for counters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskmesh import Client, ConfigurationError, Event, Settings, hookimpl
from taskmesh.events import FINAL_EVENTS
from taskmesh.plugins import PluginSettingsRegistry, plugin_settings
from taskmesh.sinks import SinkRegistry

log = logging.getLogger("taskmesh.prometheus")
#: The sink's name, and its settings' (``[tool.taskmesh.prometheus]``, ``TASKMESH_PROMETHEUS_*``).
NAME = "prometheus"
DEFAULT_PORT = 9808


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    """The Prometheus sink's settings: ``[tool.taskmesh.prometheus]``, ``TASKMESH_PROMETHEUS_<NAME>``."""

    #: The address ``/metrics`` is served on.
    addr: str = "127.0.0.1"
    #: Its port (0: a free one).
    port: int = DEFAULT_PORT


class QueueDepth(Collector):
    """Jobs per state in each queue, read when Prometheus scrapes."""

    def __init__(self, client: Client, queues: tuple[str, ...]) -> None:
        self.client = client
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("taskmesh_queue_jobs", "Jobs per state in each queue", labels=["queue", "state"])
        try:
            for queue in self.queues:
                for state, count in self.client.counts(queue).items():
                    family.add_metric([queue, state], count)
        except Exception as exc:  # Redis away: the scrape still answers, without the depths
            log.warning("prometheus sink: cannot read queue depths: %s", exc)
            return
        yield family


class PrometheusSink:
    def __init__(self, settings: Settings) -> None:
        config = plugin_settings(NAME, PrometheusSettings, settings)
        address, port = config.addr, config.port
        self.registry = CollectorRegistry()
        self.events = Counter(
            "taskmesh_events", "Lifecycle events", ["queue", "task", "event"], registry=self.registry
        )
        self.durations = Histogram(
            "taskmesh_job_duration_seconds",
            "Run time of the last attempt of finished jobs",
            ["queue", "task", "state"],
            registry=self.registry,
        )
        self.client = Client(settings=settings)
        self.registry.register(QueueDepth(self.client, settings.queues))
        try:
            self.server, self.thread = start_http_server(port, address, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"prometheus sink: cannot listen on {address}:{port}: {exc}") from None
        self.port: int = self.server.server_port

    async def emit(self, event: Event) -> None:
        task = event.data.get("task", "")
        self.events.labels(event.queue, task, event.name).inc()
        duration = event.data.get("duration_ms")
        if event.name in FINAL_EVENTS and duration is not None:
            self.durations.labels(event.queue, task, event.name).observe(int(duration) / 1000)

    async def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@hookimpl
def taskmesh_declare_settings(register: PluginSettingsRegistry) -> None:
    register.add(NAME, PrometheusSettings)


@hookimpl
def taskmesh_register_sinks(register: SinkRegistry) -> None:
    register.add(NAME, PrometheusSink)
