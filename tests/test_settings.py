"""Settings: one frozen object from defaults < [tool.taskmesh] < TASKMESH_* environment < overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from taskmesh import ConfigurationError, Settings


def pyproject(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(body)
    return path


def test_defaults_apply_when_nothing_is_configured(tmp_path: Path) -> None:
    settings = Settings.load(env={}, pyproject=tmp_path / "missing.toml")
    assert settings == Settings()
    assert (settings.redis_url, settings.prefix) == ("redis://localhost:6379/0", "taskmesh")
    assert settings.queues == ("default",)


def test_each_source_overrides_the_one_below(tmp_path: Path) -> None:
    path = pyproject(
        tmp_path,
        '[tool.taskmesh]\nprefix = "from-file"\nconcurrency = 3\nqueues = ["a", "b"]\nlease-seconds = 9\n'
        'grace_period = 4.5\n[tool.other]\nprefix = "ignored"\n',
    )
    env = {"TASKMESH_CONCURRENCY": "8", "TASKMESH_QUEUES": "x, y", "TASKMESH_GRACE_PERIOD": "7"}
    settings = Settings.load({"queues": ("z",), "prefix": None}, env=env, pyproject=path)
    assert settings.prefix == "from-file"  # file, since the override is None (an unset flag)
    assert settings.lease_seconds == 9.0  # file, dashed key
    assert settings.concurrency == 8  # env over file
    assert settings.grace_period == 7.0  # env over file
    assert settings.queues == ("z",)  # override over env
    assert settings.renew_interval == Settings().renew_interval  # default


def test_environment_strings_are_converted_to_the_setting_type() -> None:
    env = {
        "TASKMESH_CONCURRENCY": "8",
        "TASKMESH_QUEUES": "a,b",
        "TASKMESH_MODULES": "app.tasks, other.tasks",
        "TASKMESH_SWEEP_INTERVAL": "0.5",
        "TASKMESH_REDIS_URL": "redis://example:6380/1",
    }
    settings = Settings.load(env=env, pyproject=None)
    assert settings.concurrency == 8 and isinstance(settings.concurrency, int)
    assert settings.queues == ("a", "b")
    assert settings.modules == ("app.tasks", "other.tasks")
    assert settings.sweep_interval == 0.5
    assert settings.redis_url == "redis://example:6380/1"


def test_unrelated_taskmesh_environment_variables_are_ignored() -> None:
    settings = Settings.load(env={"TASKMESH_TEST_REDIS_URL": "redis://elsewhere"}, pyproject=None)
    assert settings == Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.concurrency = 2  # type: ignore[misc]
    assert settings.replace(concurrency=2).concurrency == 2


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"colour": "blue"}, "unknown setting.*colour"),
        ({"concurrency": "many"}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"lease_seconds": "soon"}, "lease_seconds"),
        ({"queues": ""}, "at least one queue"),
        ({"queues": "ok,bad queue"}, "invalid queue name"),
        ({"prefix": "a{b}"}, "invalid prefix"),
        ({"sweep_interval": 0}, "sweep_interval must be > 0"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be >= 1"),
        ({"max_stalls": -1}, "max_stalls must be >= 0"),
        ({"renew_interval": 6, "lease_seconds": 6}, "renew_interval .* must be shorter than lease_seconds"),
        ({"renew_interval": 10, "lease_seconds": 6}, "renew_interval .* must be shorter than lease_seconds"),
        ({"renew_interval": 0}, "renew_interval"),
    ],
)
def test_unknown_keys_and_bad_values_are_configuration_errors(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Settings.load(overrides, env={}, pyproject=None)


def test_bad_environment_value_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"concurrency.*'eight'"):
        Settings.load(env={"TASKMESH_CONCURRENCY": "eight"}, pyproject=None)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("[tool.taskmesh]\nwhatever = 1\n", "unknown setting.*whatever"),
        ("[tool.taskmesh]\nconcurrency = 'lots'\n", "concurrency"),
        ("[tool.taskmesh]\nrenew-interval = 10\n", "renew_interval"),
        ("[tool.taskmesh\nbroken", "invalid TOML"),
        ("[tool]\ntaskmesh = 5\n", "must be a table"),
    ],
)
def test_bad_pyproject_is_a_configuration_error(tmp_path: Path, body: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Settings.load(env={}, pyproject=pyproject(tmp_path, body))


def test_replace_validates_like_load() -> None:
    with pytest.raises(ConfigurationError, match="renew_interval"):
        Settings().replace(lease_seconds=1, renew_interval=2)
    short = Settings().replace(lease_seconds=1, renew_interval=0.3, sweep_interval=0.2)
    assert (short.lease_seconds, short.renew_interval) == (1, 0.3)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://app:s3cret@h:1/0", "s3cret"),
        ("redis://:Zq7/Xw9@h/0", "Zq7"),  # a '/' in the password once ended the masking there
        ("redis://:Zq7/Xw9@h/0", "Xw9"),
        ("redis+sentinel://:pw1@a:1,b:2/m?sentinel_password=Xw9", "Xw9"),
    ],
)
def test_repr_of_settings_hides_the_redis_password(url: str, secret: str) -> None:
    settings = Settings(redis_url=url)
    assert secret not in repr(settings) and secret not in str(settings)
    assert "***" in repr(settings) and "prefix='taskmesh'" in repr(settings)
    assert settings.redis_url == url
