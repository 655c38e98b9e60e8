"""The example plugin packages in examples/ (installed by ./dev), found through their entry points:
a webhook sink, a Prometheus sink, a third-party runner; and the settings and command that control plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskmesh import Client, ConfigurationError, Job, JobFailed, Registry, Settings, Worker, task
from taskmesh.testing import RunningWorker, wait_until

BOUND = 10.0
SECRET = "s3cret"


@task(name="ex.double")
def double(x: int) -> int:
    return 2 * x


@task(name="ex.broken")
def broken() -> None:
    raise ValueError("no")


@task(name="ex.audited", runner="audited")
def audited(job: Job, word: str) -> str:
    return word.upper()


@pytest.fixture
def start(taskmesh_client: Client) -> Iterator[Any]:
    """Start a worker built as ``taskmesh run`` builds it: with every installed entry-point plugin."""
    running: list[RunningWorker] = []

    def run(**settings: Any) -> RunningWorker:
        cfg = taskmesh_client.settings.replace(queues=("default",), **settings)
        running.append(RunningWorker(Worker.create(Registry([double, broken, audited]), cfg)).start())
        return running[-1]

    yield run
    for worker in running:
        worker.stop(timeout=BOUND)


class Receiver(BaseHTTPRequestHandler):
    """Records every POST; answers 500 to the first one, 200 to the rest."""

    received: list[tuple[int, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if not self.received else 200
        self.received.append((status, dict(self.headers), body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[int, dict[str, str], bytes]]]]:
    received: list[tuple[int, dict[str, str], bytes]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks", received
    server.shutdown()
    server.server_close()
    thread.join(BOUND)


def test_the_webhook_sink_posts_every_event_signed_and_retries_a_failed_post(
    taskmesh_client: Client, start: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskmesh_webhook_sink import verify

    url, received = receiver
    monkeypatch.setenv("TASKMESH_WEBHOOK_URL", url)
    monkeypatch.setenv("TASKMESH_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    start(sinks=("webhook",))
    handle = double.enqueue(4)
    assert handle.result(timeout=BOUND) == 8

    def delivered() -> list[dict[str, Any]]:
        return [json.loads(body) for status, _, body in received if status == 200]

    wait_until(lambda: [e["event"] for e in delivered()] == ["enqueued", "active", "completed"], timeout=BOUND)
    assert [status for status, _, _ in received] == [500, 200, 200, 200], "the refused first POST was sent again"
    assert received[0][2] == received[1][2]
    for _, headers, body in received:  # t=<unix seconds>,v1=<HMAC of "<t>." + body>: tests/test_webhook_sink.py
        assert verify(SECRET.encode(), headers["X-Taskmesh-Signature"], body)
        assert headers["X-Taskmesh-Event-Id"] == json.loads(body)["id"]
    assert all(e["job"] == handle.id and e["task"] == "ex.double" for e in delivered())


def test_the_webhook_sink_refuses_to_start_without_its_url(
    taskmesh_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKMESH_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigurationError, match="TASKMESH_WEBHOOK_URL"):
        Worker.create(Registry([double]), taskmesh_client.settings.replace(sinks=("webhook",)))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=BOUND) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_prometheus_sink_serves_event_counts_durations_and_queue_depth(
    taskmesh_client: Client, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKMESH_PROMETHEUS_PORT", "0")
    monkeypatch.setenv("TASKMESH_PROMETHEUS_ADDR", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    worker = start(sinks=("prometheus",))
    port = worker.worker.sinks["prometheus"].port  # type: ignore[attr-defined]
    handles = [double.enqueue(i) for i in range(3)]
    failed = broken.enqueue()
    later = [double.options(delay=3600).enqueue(i) for i in range(2)]
    assert [h.result(timeout=BOUND) for h in handles] == [0, 2, 4]
    with pytest.raises(JobFailed, match="ValueError: no"):
        failed.result(timeout=BOUND)

    def count(event: str, task: str) -> float:
        labels = (("event", event), ("queue", "default"), ("task", task))
        return scrape(port).get(("taskmesh_events_total", labels), 0.0)

    wait_until(lambda: count("completed", "ex.double") == 3, timeout=BOUND, message="3 completed counted")
    wait_until(lambda: count("failed", "ex.broken") == 1, timeout=BOUND, message="1 failed counted")
    metrics = scrape(port)
    assert count("enqueued", "ex.double") == 3 and count("delayed", "ex.double") == 2
    labels = (("queue", "default"), ("state", "completed"), ("task", "ex.double"))
    assert metrics[("taskmesh_job_duration_seconds_count", labels)] == 3
    depth = {labels[1][1]: value for (name, labels), value in metrics.items() if name == "taskmesh_queue_jobs"}
    assert (depth["completed"], depth["failed"], depth["delayed"], depth["waiting"]) == (3, 1, len(later), 0)


def test_a_third_party_runner_from_an_installed_package_runs_its_tasks(taskmesh_client: Client, start: Any) -> None:
    worker = start()
    assert "audited" in worker.worker.runners
    handle = audited.enqueue("hi")
    assert handle.result(timeout=BOUND) == "HI"
    [line] = handle.status().logs
    assert line.startswith("audited: ex.audited attempt 1 returned in ") and line.endswith(" ms")


def test_a_plugin_named_in_the_allow_list_must_be_installed() -> None:
    with pytest.raises(ConfigurationError, match=r"plugin\(s\) nope named in the plugins setting are not installed"):
        Worker.create(Registry([double]), Settings(plugins=("nope",)))


# -- the command line --------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, taskmesh_redis_url: str, taskmesh_prefix: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMESH_")}
    env.update(TASKMESH_REDIS_URL=taskmesh_redis_url, TASKMESH_PREFIX=taskmesh_prefix)
    (tmp_path / "runnertasks.py").write_text(
        "from taskmesh import task\n\n\n"
        '@task(name="cli.nowhere", runner="nope")\ndef nowhere() -> None: ...\n\n\n'
        '@task(name="cli.audited", runner="audited")\ndef audited() -> None: ...\n'
    )

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "taskmesh", *args]
        return subprocess.run(
            command, cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=30
        )

    return run


def test_plugins_lists_each_plugin_its_version_and_what_it_provides(cli: Any) -> None:
    done = cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    assert plugins["taskmesh.runners.subprocess"]["status"] == "built-in"
    assert plugins["taskmesh.sinks.jsonlog"]["provides"] == {"runners": [], "sinks": ["log"]}
    assert plugins["audited"] == {
        "name": "audited",
        "status": "loaded",
        "distribution": "taskmesh-audited-runner",
        "version": "0.1.0",
        "provides": {"runners": ["audited"], "sinks": []},
    }
    assert plugins["webhook"]["provides"]["sinks"] == ["webhook"]
    table = cli("plugins").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "DISTRIBUTION", "VERSION", "PROVIDES"]
    assert ["prometheus", "loaded", "taskmesh-prometheus-sink", "0.1.0", "sinks:", "prometheus"] in [
        row.split() for row in table
    ]


def test_the_allow_and_block_lists_decide_which_plugins_load(cli: Any) -> None:
    blocked = json.loads(cli("plugins", "--json", TASKMESH_DISABLE_PLUGINS="audited,webhook").stdout)
    allowed = json.loads(cli("plugins", "--json", TASKMESH_PLUGINS="webhook").stdout)
    assert {p["name"]: p["status"] for p in blocked if p["status"] != "built-in"} == {
        "audited": "blocked",
        "k8s": "loaded",
        "prometheus": "loaded",
        "webhook": "blocked",
    }
    assert {p["name"]: p["status"] for p in allowed if p["status"] != "built-in"} == {
        "audited": "not allowed",
        "k8s": "not allowed",
        "prometheus": "not allowed",
        "webhook": "loaded",
    }


def test_a_task_naming_an_unknown_runner_stops_the_worker_at_start_up_listing_the_known_ones(cli: Any) -> None:
    done = cli("run", "runnertasks", "--burst")
    assert done.returncode == 1
    assert done.stderr.strip() == "taskmesh: unknown runner(s) nope; known runners: audited, inline, k8s, subprocess"
    done = cli("run", "runnertasks", "--burst", TASKMESH_DISABLE_PLUGINS="audited")
    assert done.stderr.strip() == "taskmesh: unknown runner(s) audited, nope; known runners: inline, k8s, subprocess"
