"""The runner's configuration as plugin settings: TASKMESH_K8S_<FIELD>, else [tool.taskmesh.k8s], else defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from taskmesh_k8s import K8sConfig, options

from taskmesh import ConfigurationError, Settings
from taskmesh.plugins import PluginSettingsRegistry

TABLE = (
    '[tool.taskmesh]\nprefix = "app"\n\n[tool.taskmesh.k8s]\nnamespace = "batch"\nwatch-seconds = 45\nimage = "app:1"\n'
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose pyproject.toml configures the runner; no TASKMESH_K8S_* variable set."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text(TABLE)
    for name in [name for name in os.environ if name.startswith("TASKMESH_K8S_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_the_runner_configuration_comes_from_the_table_of_the_settings_pyproject_and_variables_win(
    project: Path,
) -> None:
    settings = Settings.load(env={}, pyproject=project / "pyproject.toml")
    env = {"TASKMESH_K8S_WATCH_SECONDS": "5", "TASKMESH_K8S_IMAGE": ""}

    config = K8sConfig.load(settings, env)

    assert (config.namespace, config.watch_seconds, config.image, config.retries) == ("batch", 5, "app:1", 6)
    assert K8sConfig.load(Settings(), {}) == K8sConfig()  # settings built in code: no file


def test_the_runner_without_settings_reads_the_nearest_pyproject(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "jobs").mkdir()
    monkeypatch.chdir(project / "jobs")
    assert (K8sConfig.from_env().namespace, K8sConfig.from_env({"TASKMESH_K8S_NAMESPACE": "x"}).namespace) == (
        "batch",
        "x",
    )


def test_an_unknown_key_or_a_bad_value_in_the_k8s_table_is_refused(project: Path) -> None:
    path = project / "pyproject.toml"
    path.write_text("[tool.taskmesh.k8s]\nnamspace = 'batch'\n")
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) in \[tool.taskmesh.k8s\]: namspace;"):
        K8sConfig.load(Settings.load(env={}, pyproject=path), {})
    path.write_text("[tool.taskmesh.k8s]\npropagation_policy = 'Orphan'\n")
    with pytest.raises(ConfigurationError, match="propagation_policy must be Background or Foreground"):
        K8sConfig.load(Settings.load(env={}, pyproject=path), {})


def test_the_runner_declares_its_configuration_as_its_settings() -> None:
    register = PluginSettingsRegistry()
    options.taskmesh_declare_settings(register=register)
    assert register.schemas == {"k8s": K8sConfig}


def test_the_installed_runner_plugin_declares_its_settings() -> None:
    from taskmesh.plugins import declared_settings, plugin_manager

    assert declared_settings(plugin_manager()).schemas["k8s"] is K8sConfig
