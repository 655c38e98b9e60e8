"""The example plugins' settings, declared through the taskmesh_declare_settings hook: from their existing
TASKMESH_<PLUGIN>_* variables, else [tool.taskmesh.<plugin>] of the pyproject.toml the worker's settings came
from, else the defaults."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from taskmesh_prometheus_sink import PrometheusSettings, PrometheusSink
from taskmesh_webhook_sink import WebhookSettings, WebhookSink

from taskmesh import ConfigurationError, Settings
from taskmesh.plugins import declared_settings, plugin_manager


@pytest.fixture(autouse=True)
def no_plugin_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith(("TASKMESH_WEBHOOK_", "TASKMESH_PROMETHEUS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def project(tmp_path: Path, body: str) -> Settings:
    """Settings loaded from a pyproject.toml holding ``body`` (and no environment)."""
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.taskmesh]\nprefix = "app"\n\n' + body)
    return Settings.load(env={}, pyproject=path)


def test_the_installed_example_plugins_declare_their_settings() -> None:
    schemas = declared_settings(plugin_manager()).schemas
    assert (schemas["webhook"], schemas["prometheus"]) == (WebhookSettings, PrometheusSettings)


def test_the_webhook_sink_reads_its_table_and_its_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = project(
        tmp_path,
        '[tool.taskmesh.webhook]\nurl = "https://hooks.example.com/in"\nsecret = "k"\nretries = 7\ntimeout = 2.5\n',
    )
    sink = WebhookSink(settings)
    assert (sink.url, sink.secret, sink.retries, sink.timeout) == ("https://hooks.example.com/in", b"k", 7, 2.5)

    monkeypatch.setenv("TASKMESH_WEBHOOK_RETRIES", "1")
    monkeypatch.setenv("TASKMESH_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    sink = WebhookSink(settings)
    assert (sink.url, sink.retries, sink.timeout) == ("http://127.0.0.1:9/hook", 1, 2.5)


def test_the_webhook_sink_refuses_an_unknown_key_in_its_table(tmp_path: Path) -> None:
    settings = project(tmp_path, '[tool.taskmesh.webhook]\nurl = "https://hooks.example.com/in"\nsecrte = "k"\n')
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) in \[tool.taskmesh.webhook\]: secrte"):
        WebhookSink(settings)


def test_the_prometheus_sink_listens_where_its_table_says_and_its_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = project(tmp_path, '[tool.taskmesh.prometheus]\naddr = "127.0.0.1"\nport = 0\n')
    sink = PrometheusSink(settings)  # port 0 from the table: a free port, not the default 9808
    try:
        assert sink.port not in (0, 9808)
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        sink.client.close()

    monkeypatch.setenv("TASKMESH_PROMETHEUS_ADDR", "192.0.2.1")  # the variable wins: an address of no interface here
    with pytest.raises(ConfigurationError, match=r"cannot listen on 192\.0\.2\.1:0"):
        PrometheusSink(settings)
