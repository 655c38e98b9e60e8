"""Settings: one frozen object from defaults < [tool.taskmesh] < TASKMESH_* environment < overrides; where the
pyproject.toml is found; and plugins' own settings, from [tool.taskmesh.<plugin>] < TASKMESH_<PLUGIN>_*."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, Registry, Settings, Worker, hookimpl
from taskmesh.plugins import PluginSettingsRegistry, plugin_settings
from taskmesh.settings import find_pyproject, resolve_plugin_settings, resolve_settings


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


# -- where the pyproject.toml is found ------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository (its root holds .git, where the search for pyproject.toml ends), no TASKMESH_*
    variable set."""
    (tmp_path / ".git").mkdir()
    for name in [name for name in os.environ if name.startswith("TASKMESH_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_settings_are_read_from_the_nearest_pyproject_with_a_taskmesh_table_above_the_current_directory(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pyproject(repository, '[tool.taskmesh]\nprefix = "root"\n')
    (repository / "app").mkdir()
    (repository / "app" / "pyproject.toml").write_text('[project]\nname = "app"\n')  # no table: looked past
    nested = repository / "app" / "src" / "app"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)

    settings = Settings.load()

    assert find_pyproject() == path
    assert (settings.prefix, settings.pyproject) == ("root", path)


def test_the_nearest_taskmesh_table_wins_over_one_further_up(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject(repository, '[tool.taskmesh]\nprefix = "root"\nconcurrency = 3\n')
    (repository / "service").mkdir()
    nearest = pyproject(repository / "service", '[tool.taskmesh]\nprefix = "service"\n')
    monkeypatch.chdir(repository / "service")

    settings = Settings.load()

    assert (settings.prefix, settings.concurrency, settings.pyproject) == ("service", Settings().concurrency, nearest)


def test_the_search_for_pyproject_ends_at_the_repository_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject(tmp_path, '[tool.taskmesh]\nprefix = "outside"\n')
    inside = tmp_path / "checkout" / "pkg"
    inside.mkdir(parents=True)
    (tmp_path / "checkout" / ".git").mkdir()
    monkeypatch.chdir(inside)

    assert find_pyproject() is None
    assert Settings.load(env={}) == Settings()
    assert find_pyproject(tmp_path) == tmp_path / "pyproject.toml"


def test_an_invalid_pyproject_found_on_the_way_up_is_a_configuration_error_naming_it(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pyproject(repository, "[tool.taskmesh\n")
    (repository / "sub").mkdir()
    monkeypatch.chdir(repository / "sub")
    with pytest.raises(ConfigurationError, match=f"{path}: invalid TOML"):
        Settings.load()


# -- one precedence: arguments > TASKMESH_* > [tool.taskmesh] > defaults ------------------------


@pytest.mark.parametrize(
    ("sources", "prefix", "origin"),
    [
        ({"pyproject"}, "from-file", "pyproject"),  # over the default
        ({"pyproject", "env"}, "from-env", "env"),
        ({"pyproject", "argument"}, "from-argument", "argument"),
        ({"env", "argument"}, "from-argument", "argument"),
        ({"pyproject", "env", "argument"}, "from-argument", "argument"),
        (set(), "taskmesh", "default"),
    ],
    ids=[
        "file-over-default",
        "env-over-file",
        "argument-over-file",
        "argument-over-env",
        "argument-over-all",
        "default",
    ],
)
def test_each_source_wins_over_every_source_below_it(
    tmp_path: Path, sources: set[str], prefix: str, origin: str
) -> None:
    path = pyproject(tmp_path, '[tool.taskmesh]\nprefix = "from-file"\n' if "pyproject" in sources else "")
    env = {"TASKMESH_PREFIX": "from-env"} if "env" in sources else {}
    overrides = {"prefix": "from-argument" if "argument" in sources else None}

    resolved = resolve_settings(overrides, env=env, pyproject=path)

    assert resolved.settings.prefix == prefix
    assert resolved.origins["prefix"].kind == origin
    assert resolved.origins["concurrency"].kind == "default"


def test_the_origin_of_each_value_names_the_file_the_variable_or_the_flag(tmp_path: Path) -> None:
    path = pyproject(tmp_path, "[tool.taskmesh]\nconcurrency = 4\n")
    resolved = resolve_settings(
        {"prefix": "p", "queues": ("a",)},
        env={"TASKMESH_SINKS": "log"},
        pyproject=path,
        flags={"queues": "--queue"},
    )
    assert {
        name: str(resolved.origins[name]) for name in ("concurrency", "sinks", "queues", "prefix", "scheduler")
    } == {
        "concurrency": str(path),
        "sinks": "TASKMESH_SINKS",
        "queues": "--queue",
        "prefix": "prefix",
        "scheduler": "default",
    }
    assert [resolved.origins[name].kind for name in ("queues", "prefix")] == ["flag", "argument"]


@pytest.fixture
def project(repository: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory, a project whose pyproject.toml sets the prefix."""
    pyproject(repository, '[tool.taskmesh]\nprefix = "from-file"\nconcurrency = 3\n')
    monkeypatch.chdir(repository)
    return repository


def test_the_client_reads_arguments_then_environment_then_pyproject(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Client().settings.prefix == "from-file"
    monkeypatch.setenv("TASKMESH_PREFIX", "from-env")
    assert Client().settings.prefix == "from-env"
    assert Client(prefix="from-argument").settings.prefix == "from-argument"
    assert Client().settings.concurrency == 3


def test_a_client_given_settings_reads_no_other_source(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMESH_CONCURRENCY", "7")
    client = Client(settings=Settings(lease_seconds=9))
    assert (client.settings.prefix, client.settings.concurrency, client.settings.lease_seconds) == ("taskmesh", 10, 9)
    assert Client(prefix="p", settings=Settings()).settings.prefix == "p"


def test_plugin_tables_in_the_taskmesh_table_are_not_core_settings(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.taskmesh]\nprefix = "app"\n[tool.taskmesh.notinstalled]\nanything = 1\n')
    assert Settings.load(env={}, pyproject=path).prefix == "app"


@pytest.fixture
def developer_project(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A project pyproject.toml and a shell variable that the test fixtures must not read."""
    pyproject(repository, "[tool.taskmesh]\nconcurrency = 3\nlease_seconds = 60\n")
    monkeypatch.chdir(repository)
    monkeypatch.setenv("TASKMESH_MAX_PAYLOAD_BYTES", "5")


def test_the_test_fixtures_read_no_pyproject_and_no_environment(
    developer_project: None, taskmesh_client: Client
) -> None:
    settings = taskmesh_client.settings
    assert settings.replace(redis_url=Settings().redis_url, prefix=Settings().prefix) == Settings()
    assert settings.pyproject is None


# -- plugins' own settings --------------------------------------------------------------


@dataclass(frozen=True)
class ShipSettings:
    host: str = "localhost"
    port: int = 8125
    tags: tuple[str, ...] = ()
    ratio: float | None = None
    token: str = field(default="", metadata={"secret": True})


class ShipPlugin:
    @hookimpl
    def taskmesh_declare_settings(self, register: PluginSettingsRegistry) -> None:
        register.add("ship", ShipSettings)


def test_plugin_settings_come_from_the_environment_then_its_pyproject_table_then_defaults(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.taskmesh.ship]\nhost = "stats.local"\nport = 9000\ntags = ["a", "b"]\n')
    env = {"TASKMESH_SHIP_PORT": "9100", "TASKMESH_SHIP_RATIO": "0.5", "TASKMESH_SHIP_HOST": ""}

    resolved = resolve_plugin_settings("ship", ShipSettings, pyproject=path, env=env)

    assert resolved.settings == ShipSettings(host="stats.local", port=9100, tags=("a", "b"), ratio=0.5)
    assert {name: str(origin) for name, origin in resolved.origins.items()} == {
        "host": str(path),  # the empty variable counts as unset
        "port": "TASKMESH_SHIP_PORT",
        "tags": str(path),
        "ratio": "TASKMESH_SHIP_RATIO",
        "token": "default",
    }


def test_a_plugin_reads_the_pyproject_its_settings_came_from_and_none_for_settings_built_in_code(
    tmp_path: Path,
) -> None:
    path = pyproject(tmp_path, '[tool.taskmesh]\nprefix = "app"\n[tool.taskmesh.ship]\nport = 9000\n')
    loaded = Settings.load(env={}, pyproject=path)

    assert plugin_settings("ship", ShipSettings, loaded, env={}).port == 9000
    assert plugin_settings("ship", ShipSettings, loaded.replace(concurrency=2), env={}).port == 9000
    assert plugin_settings("ship", ShipSettings, Settings(), env={}).port == 8125
    assert plugin_settings("ship", ShipSettings, Settings(), env={"TASKMESH_SHIP_PORT": "1"}).port == 1


@pytest.mark.parametrize(
    ("body", "env", "words"),
    [
        ("[tool.taskmesh.ship]\nhots = 'x'\nport = 1\n", {}, r"unknown setting\(s\) in \[tool.taskmesh.ship\]: hots;"),
        ("[tool.taskmesh.ship]\nport = 'many'\n", {}, r"ship.port in .*pyproject.toml: cannot read 'many' as int"),
        ("", {"TASKMESH_SHIP_PORT": "many"}, r"TASKMESH_SHIP_PORT: cannot read 'many' as int"),
        ("[tool.taskmesh]\nship = 5\n", {}, r"\[tool.taskmesh.ship\] must be a table"),
    ],
    ids=["unknown-key", "bad-value-in-file", "bad-variable", "not-a-table"],
)
def test_a_mistake_in_plugin_settings_is_a_configuration_error_naming_where(
    tmp_path: Path, body: str, env: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        resolve_plugin_settings("ship", ShipSettings, pyproject=pyproject(tmp_path, body), env=env)


def test_a_worker_refuses_to_start_on_an_unknown_key_in_a_declared_plugin_table(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.taskmesh]\nprefix = "app"\n[tool.taskmesh.ship]\nprot = 1\n')
    settings = Settings.load(env={}, pyproject=path)
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) in \[tool.taskmesh.ship\]: prot"):
        Worker.create(Registry(), settings, entry_points=False, plugins=[ShipPlugin()])
    assert Worker.create(Registry(), Settings(), entry_points=False, plugins=[ShipPlugin()]).settings == Settings()


@dataclass
class NoDefault:
    host: str


@dataclass
class Listed:
    hosts: list[str] = field(default_factory=list)


@dataclass
class Buffered:
    buffer: int = 1


@dataclass
class TagsBuffer:
    tags_buffer: int = 1


@pytest.mark.parametrize(
    ("name", "schema", "words"),
    [
        ("Ship", ShipSettings, "lowercase letters"),
        ("prefix", ShipSettings, "not the name of a core setting"),
        ("ship", NoDefault, "setting host needs a default"),
        ("ship", Listed, "setting hosts has type list"),
        ("ship", dict, "must be a dataclass"),
        (
            "sink",
            Buffered,
            "sink: setting buffer would be read from TASKMESH_SINK_BUFFER, which is the variable of sink_buffer",
        ),
    ],
    ids=["uppercase-name", "core-name", "no-default", "list-type", "not-a-dataclass", "core-variable"],
)
def test_a_plugin_declaring_settings_that_cannot_be_read_is_refused(name: str, schema: type[Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        PluginSettingsRegistry().add(name, schema)


def test_two_plugins_declaring_one_name_or_one_variable_are_refused() -> None:
    register = PluginSettingsRegistry()
    register.add("ship", ShipSettings)
    register.add("ship", ShipSettings)  # the same declaration again is harmless
    with pytest.raises(ConfigurationError, match="two plugins declare settings named ship"):
        register.add("ship", Buffered)
    register.add("mail", TagsBuffer)  # TASKMESH_MAIL_TAGS_BUFFER
    with pytest.raises(
        ConfigurationError, match=r"TASKMESH_MAIL_TAGS_BUFFER, which is the variable of mail\.tags_buffer"
    ):
        register.add("mail_tags", Buffered)
    assert set(register.schemas) == {"ship", "mail"}
