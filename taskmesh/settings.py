"""Configuration, one precedence everywhere (highest first): explicit arguments (command-line flags,
``Client(url, prefix=...)``), ``TASKMESH_*`` environment variables, ``[tool.taskmesh]`` in the nearest
pyproject.toml (:func:`find_pyproject`), defaults.

The core's knobs are one frozen :class:`Settings`. A plugin declares its own settings (a dataclass) with the
``taskmesh_declare_settings`` hook and reads them with :func:`plugin_settings`: from ``TASKMESH_<PLUGIN>_<NAME>``,
``[tool.taskmesh.<plugin>]`` of the same pyproject.toml, or the defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from .errors import ConfigurationError
from .names import check_name
from .urls import redact

ENV_PREFIX = "TASKMESH_"
PYPROJECT = "pyproject.toml"
#: The search for pyproject.toml goes no further up than a directory holding one of these (a repository's root).
REPOSITORY_MARKERS = (".git", ".hg")
SettingsT = TypeVar("SettingsT")


class _Discover(enum.Enum):
    DISCOVER = "discover"


#: ``pyproject=DISCOVER``: read the pyproject.toml :func:`find_pyproject` finds from the current directory.
DISCOVER: Final = _Discover.DISCOVER


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a client or worker. Times are seconds."""

    redis_url: str = "redis://localhost:6379/0"
    prefix: str = "taskmesh"
    #: Task modules to import (``taskmesh run`` arguments; empty: the ``taskmesh.tasks`` entry points).
    modules: tuple[str, ...] = ()
    #: Queues a worker leases from, in order of preference.
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    #: A lease not renewed for this long is stalled and the job goes to another worker.
    lease_seconds: float = 6.0
    #: How often a worker renews all its leases (one call).
    renew_interval: float = 2.0
    #: How often each worker looks for stalled jobs.
    sweep_interval: float = 2.0
    #: A job whose lease expired more often than this fails as "worker lost".
    max_stalls: int = 2
    #: On SIGTERM/SIGINT, running jobs get this long to finish before they are handed back.
    grace_period: float = 10.0
    max_payload_bytes: int = 512 * 1024
    #: Retention of finished jobs: keep at most N (-1: no limit) and none older than the age (-1: forever).
    completed_keep: int = 10_000
    completed_age: float = 24 * 3600
    failed_keep: int = 100_000
    failed_age: float = 7 * 24 * 3600
    #: Approximate length the per-queue event stream is trimmed to.
    events_maxlen: int = 10_000
    #: Longest an idle worker blocks before looking again (a safety net; enqueue wakes it at once).
    idle_timeout: float = 5.0
    #: Run the scheduler loop (fires schedules' ticks; any number of workers may, each tick fires once).
    scheduler: bool = True
    #: At start-up, remove stored schedules declared in code that no task of this worker declares.
    prune_schedules: bool = False
    #: Event sinks a worker feeds, by registered name (``log`` is built in; plugins add others).
    sinks: tuple[str, ...] = ()
    #: Events each sink may have waiting; when full, new events for that sink are dropped and counted.
    sink_buffer: int = 10_000
    #: Entry-point plugins to load, by entry-point name (empty: every installed one).
    plugins: tuple[str, ...] = ()
    #: Entry-point plugins never to load, by entry-point name.
    disable_plugins: tuple[str, ...] = ()
    #: Not a setting: the pyproject.toml these settings were read from (None: none), where plugins read
    #: their ``[tool.taskmesh.<plugin>]`` tables (:func:`plugin_settings`).
    pyproject: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            check_name("prefix", self.prefix)
            for queue in self.queues:
                check_name("queue name", queue)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if not self.queues:
            raise ConfigurationError("at least one queue is needed")
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, not {self.concurrency}")
        if not 0 < self.renew_interval < self.lease_seconds:
            raise ConfigurationError(
                f"renew_interval ({self.renew_interval}s) must be shorter than lease_seconds ({self.lease_seconds}s)"
            )
        for name in ("sweep_interval", "grace_period", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0")
        for name in ("max_payload_bytes", "events_maxlen", "sink_buffer"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1")
        if self.max_stalls < 0:
            raise ConfigurationError(f"max_stalls must be >= 0, not {self.max_stalls}")

    def __repr__(self) -> str:
        """The dataclass repr, with the password in ``redis_url`` masked."""

        values = {name: getattr(self, name) for name in SETTING_NAMES}
        values["redis_url"] = redact(self.redis_url)
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        pyproject: Path | _Discover | None = DISCOVER,
    ) -> Settings:
        """Build settings from (lowest first) defaults, ``[tool.taskmesh]``, ``TASKMESH_*`` and ``overrides``.

        ``None`` values in ``overrides`` are ignored, so unset CLI flags fall through. ``env`` defaults to
        ``os.environ``; ``pyproject`` to the file :func:`find_pyproject` finds (None: read no file).
        """
        return resolve_settings(overrides, env=env, pyproject=pyproject).settings


#: The names of the settings (every field of Settings but ``pyproject``), in their order.
SETTING_NAMES: Final = tuple(f.name for f in fields(Settings) if f.name != "pyproject")
_SETTING_TYPES: Final = {f.name: f.type for f in fields(Settings)}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting's value came from: ``kind`` is ``default``, ``pyproject``, ``env``, ``flag`` (a
    command-line flag) or ``argument`` (a keyword argument); ``where`` names the file, the environment
    variable, the flag or the argument (empty for a default)."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return self.where or self.kind


DEFAULT_ORIGIN: Final = Origin("default")


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """Settings with the origin of each value, by setting name (what ``taskmesh config`` shows)."""

    settings: Settings
    origins: Mapping[str, Origin]


def resolve_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    pyproject: Path | _Discover | None = DISCOVER,
    flags: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """:meth:`Settings.load`, with the origin of each value. ``flags`` names the command-line flag each of the
    ``overrides`` came from (their origin is then ``flag``, else ``argument``)."""
    env = os.environ if env is None else env
    path = find_pyproject() if isinstance(pyproject, _Discover) else pyproject
    table = read_table(path) if path is not None else None
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = dict.fromkeys(SETTING_NAMES, DEFAULT_ORIGIN)
    for key, value in (table or {}).items():
        name = key.replace("-", "_")
        if isinstance(value, dict) and name not in _SETTING_TYPES:
            continue  # [tool.taskmesh.<plugin>]: a plugin's own settings
        values[name], origins[name] = value, Origin("pyproject", str(path))
    for name in SETTING_NAMES:
        variable = ENV_PREFIX + name.upper()
        if variable in env:
            values[name], origins[name] = env[variable], Origin("env", variable)
    for name, value in (overrides or {}).items():
        if value is not None:
            flag = (flags or {}).get(name)
            values[name], origins[name] = value, Origin("flag", flag) if flag else Origin("argument", name)
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        where = "; ".join(f"{name} ({_described(origins[name])})" for name in unknown)
        raise ConfigurationError(f"unknown setting(s): {where}; known: {', '.join(SETTING_NAMES)}")
    typed = {name: coerce(name, _SETTING_TYPES[name], value) for name, value in values.items()}
    settings = Settings(**typed, pyproject=path if table is not None else None)
    return ResolvedSettings(settings, origins)


def _described(origin: Origin) -> str:
    if origin.kind == "pyproject":
        return f"[tool.taskmesh] of {origin.where}"
    return f"{origin.kind} {origin.where}"


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml that has a ``[tool.taskmesh]`` table: in ``start`` (default: the current
    directory) or else in the nearest of its parents, looking no further up than the root of a repository
    (a directory holding ``.git`` or ``.hg``, itself included) or of the file system. None if there is none.

    So a producer started in a sub-directory of a project reads the same file as a worker started at its
    root, and a project without the table never picks up one of an unrelated project above it."""
    try:
        here = (Path.cwd() if start is None else start).resolve()
    except OSError:  # the current directory was removed
        return None
    for directory in (here, *here.parents):
        candidate = directory / PYPROJECT
        if candidate.is_file() and read_table(candidate) is not None:
            return candidate
        if any((directory / marker).exists() for marker in REPOSITORY_MARKERS):
            return None
    return None


def read_table(path: Path) -> dict[str, Any] | None:
    """The ``[tool.taskmesh]`` table of the TOML file ``path``; None when the file or the table is missing."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read it: {exc}") from None
    tool = document.get("tool")
    if not isinstance(tool, dict) or "taskmesh" not in tool:
        return None
    table = tool["taskmesh"]
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [tool.taskmesh] must be a table")
    return table


def coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` (from TOML or the environment) as the type ``kind`` names; a ConfigurationError if it cannot be."""
    kind = str(kind)
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean")
        if kind in ("int", "float") and isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(f"setting {name}: cannot read {value!r} as {kind}") from None


# -- plugins' own settings ---------------------------------------------------------

_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]*")
_KINDS = ("str", "int", "float", "bool", "tuple[str, ...]")
_OPTIONAL = re.compile(r"(?:(.+?)\s*\|\s*None|None\s*\|\s*(.+)|Optional\[(.+)\])")


def plugin_env(plugin: str, name: str) -> str:
    """The environment variable of setting ``name`` of plugin ``plugin``: ``TASKMESH_<PLUGIN>_<NAME>``."""
    return f"{ENV_PREFIX}{plugin.upper()}_{name.upper()}"


@dataclass(frozen=True, slots=True)
class PluginSetting:
    """One setting a plugin declared: a field of its settings class.

    ``kind`` is ``str``, ``int``, ``float``, ``bool`` or ``tuple[str, ...]`` (``optional``: or None).
    A field with ``metadata={"secret": True}`` is shown as ``***``; with ``metadata={"mask": function}``,
    as ``function(value)`` (for a URL whose path or query may hold a token)."""

    name: str
    kind: str
    optional: bool
    default: Any
    env: str
    secret: bool = False
    mask: Callable[[str], str] | None = None


def declared_fields(plugin: str, schema: type[Any]) -> tuple[PluginSetting, ...]:
    """The settings the class ``schema`` declares for ``plugin``; a ConfigurationError naming the field if
    ``schema`` is no dataclass, or a field has no default or a type settings cannot be read as."""
    if not dataclasses.is_dataclass(schema) or not isinstance(schema, type):
        raise ConfigurationError(f"plugin {plugin}: its settings class {schema!r} must be a dataclass")
    declared = []
    for f in fields(schema):
        if not f.init:
            continue
        text = f.type.__name__ if isinstance(f.type, type) else str(f.type).replace("typing.", "")
        optional = _OPTIONAL.fullmatch(text.strip())
        kind = next(part for part in optional.groups() if part) if optional else text
        kind = re.sub(r"\s+", "", kind).replace(",", ", ")
        if kind not in _KINDS:
            raise ConfigurationError(
                f"plugin {plugin}: setting {f.name} has type {text}; settings are {', '.join(_KINDS)} or one "
                "of them | None"
            )
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise ConfigurationError(f"plugin {plugin}: setting {f.name} needs a default")
        mask = f.metadata.get("mask")
        declared.append(
            PluginSetting(
                f.name,
                kind,
                optional is not None,
                default,
                plugin_env(plugin, f.name),
                secret=bool(f.metadata.get("secret")),
                mask=mask if callable(mask) else None,
            )
        )
    return tuple(declared)


class PluginSettingsRegistry:
    """What the ``taskmesh_declare_settings`` hook fills: each plugin's settings class, by plugin name."""

    def __init__(self) -> None:
        self.schemas: dict[str, type[Any]] = {}

    def add(self, name: str, schema: type[Any]) -> None:
        """Declare the dataclass ``schema`` as the settings of plugin ``name`` (``[tool.taskmesh.<name>]``,
        ``TASKMESH_<NAME>_<FIELD>``). The name is lowercase letters, digits and ``_``; it may not be a core
        setting's, nor another plugin's; no variable may be another setting's."""
        if not _PLUGIN_NAME.fullmatch(name) or name in _SETTING_TYPES:
            raise ConfigurationError(
                f"cannot declare settings for plugin {name!r}: use lowercase letters, digits and '_', starting "
                "with a letter, and not the name of a core setting"
            )
        known = self.schemas.get(name)
        if known is not None and known is not schema:
            raise ConfigurationError(
                f"two plugins declare settings named {name}: {known.__qualname__} and {schema.__qualname__}"
            )
        taken = {ENV_PREFIX + core.upper(): core for core in SETTING_NAMES}
        for other, other_schema in self.schemas.items():
            if other != name:
                taken.update({s.env: f"{other}.{s.name}" for s in declared_fields(other, other_schema)})
        for setting in declared_fields(name, schema):
            if setting.env in taken:
                raise ConfigurationError(
                    f"plugin {name}: setting {setting.name} would be read from {setting.env}, "
                    f"which is the variable of {taken[setting.env]}"
                )
        self.schemas[name] = schema


@dataclass(frozen=True, slots=True)
class ResolvedPluginSettings(Generic[SettingsT]):
    """A plugin's settings with the origin of each value, by setting name."""

    name: str
    settings: SettingsT
    declared: tuple[PluginSetting, ...]
    origins: Mapping[str, Origin]


def resolve_plugin_settings(
    plugin: str,
    schema: type[SettingsT],
    *,
    pyproject: Path | _Discover | None = DISCOVER,
    env: Mapping[str, str] | None = None,
) -> ResolvedPluginSettings[SettingsT]:
    """Plugin ``plugin``'s settings as a ``schema``, each field from (highest first) ``TASKMESH_<PLUGIN>_<FIELD>``
    when it is set and not empty, ``[tool.taskmesh.<plugin>]`` of ``pyproject``, its default.

    A key of the table that is no field, or a value that cannot be read as its field's type, is a
    ConfigurationError naming the file or the variable."""
    env = os.environ if env is None else env
    declared = {setting.name: setting for setting in declared_fields(plugin, schema)}
    path = find_pyproject() if isinstance(pyproject, _Discover) else pyproject
    table = plugin_table(path, plugin) if path is not None else {}
    unknown = sorted(key for key in table if key.replace("-", "_") not in declared)
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown setting(s) in [tool.taskmesh.{plugin}]: {', '.join(unknown)}; "
            f"the {plugin} plugin's settings are: {', '.join(declared) or 'none'}"
        )
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = dict.fromkeys(declared, DEFAULT_ORIGIN)
    for key, value in table.items():
        setting = declared[key.replace("-", "_")]
        values[setting.name] = coerce(f"{plugin}.{setting.name} in {path}", setting.kind, value)
        origins[setting.name] = Origin("pyproject", str(path))
    for setting in declared.values():
        raw = env.get(setting.env)
        if raw:  # an empty variable counts as unset
            values[setting.name] = coerce(setting.env, setting.kind, raw)
            origins[setting.name] = Origin("env", setting.env)
    try:
        settings = schema(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"the {plugin} plugin's settings: {exc}") from None
    return ResolvedPluginSettings(plugin, settings, tuple(declared.values()), origins)


def plugin_settings(
    plugin: str, schema: type[SettingsT], settings: Settings | None = None, *, env: Mapping[str, str] | None = None
) -> SettingsT:
    """What a plugin calls to read its settings: a ``schema`` (the dataclass it declared through the
    ``taskmesh_declare_settings`` hook) from ``TASKMESH_<PLUGIN>_<FIELD>``, else ``[tool.taskmesh.<plugin>]``
    of the pyproject.toml ``settings`` were read from (``settings.pyproject``: none for settings built in
    code; the nearest one when ``settings`` is None), else the field's default."""
    pyproject = DISCOVER if settings is None else settings.pyproject
    return resolve_plugin_settings(plugin, schema, pyproject=pyproject, env=env).settings


def plugin_table(path: Path, plugin: str) -> dict[str, Any]:
    """``[tool.taskmesh.<plugin>]`` of ``path`` ({} when it has none)."""
    table = (read_table(path) or {}).get(plugin, {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [tool.taskmesh.{plugin}] must be a table")
    return table


def plugin_tables(path: Path | None) -> list[str]:
    """The names of the ``[tool.taskmesh.<plugin>]`` tables of ``path``."""
    table = read_table(path) if path is not None else None
    return sorted(key for key, value in (table or {}).items() if isinstance(value, dict) and key not in _SETTING_TYPES)
