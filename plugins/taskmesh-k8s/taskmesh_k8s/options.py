"""The runner's configuration (per worker, :class:`K8sConfig`) and each task's options (:class:`JobOptions`).

A task names its options in ``@task(runner="k8s", runner_options={...})``; they are checked when a
worker starts, so a typo fails there and not at the first job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskmesh import Backoff, ConfigurationError, Settings, hookimpl
from taskmesh.plugins import PluginSettingsRegistry, plugin_settings
from taskmesh.urls import redact

from .names import CONTAINER, is_dns_label, is_label_key, is_label_value

#: The command that runs the task inside the pod (see ``taskmesh_k8s.entry``).
DEFAULT_COMMAND = ("python", "-m", "taskmesh_k8s.entry")
#: The name of the runner's settings: ``[tool.taskmesh.k8s]``, ``TASKMESH_K8S_<FIELD>``.
SETTINGS_NAME = "k8s"
ENV_PREFIX = "TASKMESH_K8S_"


@dataclass(frozen=True, slots=True)
class K8sConfig:
    """How one worker reaches Kubernetes, and its defaults for every task.

    The plugin's settings (declared through the ``taskmesh_declare_settings`` hook; :meth:`load`): each
    field from ``TASKMESH_K8S_<FIELD>`` (``TASKMESH_K8S_NAMESPACE``, ...), else from ``[tool.taskmesh.k8s]``
    of pyproject.toml, else its default. Without ``kubeconfig``: ``KUBECONFIG``, else ``~/.kube/config``;
    inside a pod with neither, the in-cluster service account.
    """

    kubeconfig: str | None = None
    context: str | None = None
    #: Namespace of tasks that name none; also swept for leftover Jobs at start-up.
    namespace: str = "default"
    #: Image of tasks that name none.
    image: str | None = None
    #: A watch asks the API server to end it after this long; then the status is read and watched again.
    watch_seconds: int = 30
    #: Client-side timeout of every other API request (a watch gets ``watch_seconds`` plus this).
    request_timeout: float = 10.0
    #: Transient API errors (429, 5xx, timeouts, dropped connections) are retried this many times...
    retries: int = 6
    #: ... after ``retry_base * 2**n`` seconds (with jitter), at most ``retry_cap``; a 429's Retry-After is honoured.
    retry_base: float = 0.2
    retry_cap: float = 10.0
    #: Lines of the pod's log quoted in the error of a failed attempt.
    log_lines: int = 20
    #: How a deleted Job's pods go: ``Background`` (at once, by the garbage collector) or ``Foreground``.
    propagation_policy: str = "Background"

    @property
    def backoff(self) -> Backoff:
        """The pause before retry number n of an API call or a watch: ``retry_base * 2**(n-1)``, at most
        ``retry_cap``, less up to half of it (jitter)."""
        return Backoff.exponential(self.retry_base, cap=self.retry_cap, jitter=0.5)

    def __post_init__(self) -> None:
        if self.watch_seconds < 1 or self.request_timeout <= 0 or self.retries < 0 or self.log_lines < 0:
            raise ConfigurationError(f"invalid Kubernetes runner configuration {self}")
        if self.propagation_policy not in ("Background", "Foreground"):
            raise ConfigurationError(
                f"propagation_policy must be Background or Foreground, not {self.propagation_policy!r}"
            )
        try:
            _check_dns_label("namespace", self.namespace)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    @classmethod
    def load(cls, settings: Settings | None = None, env: Mapping[str, str] | None = None) -> K8sConfig:
        """Every field from ``TASKMESH_K8S_<FIELD>`` where it is set and not empty, else from
        ``[tool.taskmesh.k8s]`` of the pyproject.toml ``settings`` were read from (the nearest one when
        ``settings`` is None), else its default."""
        return plugin_settings(SETTINGS_NAME, cls, settings, env=env)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> K8sConfig:
        """:meth:`load` without a worker's settings: ``TASKMESH_K8S_<FIELD>``, else ``[tool.taskmesh.k8s]`` of
        the nearest pyproject.toml, else the default."""
        return cls.load(None, env)


@hookimpl
def taskmesh_declare_settings(register: PluginSettingsRegistry) -> None:
    """The runner's settings are :class:`K8sConfig`'s fields."""
    register.add(SETTINGS_NAME, K8sConfig)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """One key of a Secret (``secret``) or ConfigMap (``config_map``), by reference."""

    kind: str  # "secret" or "config_map"
    name: str
    key: str

    def env_source(self) -> dict[str, Any]:
        field_name = "secretKeyRef" if self.kind == "secret" else "configMapKeyRef"
        return {field_name: {"name": self.name, "key": self.key}}


@dataclass(frozen=True, slots=True)
class JobOptions:
    """A task's Kubernetes options, from ``runner_options`` (keys as the field names below).

    ``env`` values are literal strings or ``{"secret": NAME, "key": KEY}`` /
    ``{"config_map": NAME, "key": KEY}`` references; ``env_from`` is a list of ``{"secret": NAME}`` /
    ``{"config_map": NAME}``. ``resources``, ``tolerations`` and ``job_template`` use the Kubernetes
    (camelCase) shapes. ``job_template`` is a partial ``batch/v1`` Job merged over the generated one.
    """

    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    namespace: str | None = None
    service_account: str | None = None
    env: Mapping[str, str | SecretRef] = field(default_factory=dict)
    env_from: tuple[tuple[str, str], ...] = ()  # (kind, name)
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    ttl_seconds_after_finished: int | None = 3600
    #: The Redis URL the pod uses (default: the worker's); a URL with a password must come from a Secret.
    redis_url: str | None = None
    redis_url_secret: SecretRef | None = None
    job_template: Mapping[str, Any] = field(default_factory=dict)

    @property
    def runs_entry(self) -> bool:
        """The pod runs taskmesh's entry (which reports the result), not a command of the user's."""
        return self.command is None or tuple(self.command) == DEFAULT_COMMAND

    @classmethod
    def parse(cls, task: str, raw: Mapping[str, Any], config: K8sConfig, worker_redis_url: str) -> JobOptions:
        """Check ``raw`` and fill in the worker's defaults; a mistake is a ConfigurationError naming the task."""
        try:
            options = cls._parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"task {task}: runner_options: {exc}") from None
        namespace = options.namespace or config.namespace
        image = options.image or config.image
        template_image = _template_image(options.job_template)
        if image is None and template_image is None:
            raise ConfigurationError(
                f"task {task}: no image: give runner_options={{'image': ...}} or set {ENV_PREFIX}IMAGE"
            )
        redis_url = options.redis_url or worker_redis_url
        if options.redis_url_secret is None and redact(redis_url) != redis_url:
            raise ConfigurationError(
                f"task {task}: the Redis URL {redact(redis_url)} holds a password, which must not be written into "
                "the Job: store the URL in a Secret and name it with runner_options={'redis_url_secret': "
                "{'secret': NAME, 'key': KEY}}"
            )
        return dataclasses.replace(options, namespace=namespace, image=image, redis_url=redis_url)

    @classmethod
    def _parse(cls, raw: Mapping[str, Any]) -> JobOptions:
        if not isinstance(raw, Mapping):
            raise TypeError("must be a mapping")
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name in ("image", "namespace", "service_account", "redis_url"):
            if raw.get(name) is not None:
                values[name] = _str(name, raw[name])
        if raw.get("namespace") is not None:
            _check_dns_label("namespace", values["namespace"])
        for name in ("command", "args"):
            if raw.get(name) is not None:
                values[name] = _strings(name, raw[name])
        values["env"] = {_str("env name", k): _env_value(k, v) for k, v in _mapping("env", raw.get("env")).items()}
        values["env_from"] = tuple(_env_from(item) for item in _list("env_from", raw.get("env_from")))
        values["resources"] = _mapping("resources", raw.get("resources"))
        values["node_selector"] = _str_map("node_selector", raw.get("node_selector"))
        values["tolerations"] = tuple(_mapping("toleration", t) for t in _list("tolerations", raw.get("tolerations")))
        values["labels"] = _labels(raw.get("labels"))
        values["annotations"] = _str_map("annotations", raw.get("annotations"))
        values["image_pull_secrets"] = _strings("image_pull_secrets", raw.get("image_pull_secrets") or [])
        if "ttl_seconds_after_finished" in raw:
            ttl = raw["ttl_seconds_after_finished"]
            if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
                raise ValueError(f"ttl_seconds_after_finished must be an int >= 0 or None, not {ttl!r}")
            values["ttl_seconds_after_finished"] = ttl
        if raw.get("redis_url_secret") is not None:
            values["redis_url_secret"] = _ref("redis_url_secret", raw["redis_url_secret"], kinds=("secret",))
        values["job_template"] = _mapping("job_template", raw.get("job_template"))
        return cls(**values)


def _template_image(template: Mapping[str, Any]) -> str | None:
    try:
        containers = template["spec"]["template"]["spec"]["containers"]
        return next((c["image"] for c in containers if c.get("name") == CONTAINER and c.get("image")), None)
    except (KeyError, TypeError):
        return None


def _check_dns_label(what: str, value: str) -> None:
    if not is_dns_label(value):
        raise ValueError(f"invalid {what} {value!r}: use up to 63 lowercase letters, digits and '-'")


def _str(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _strings(what: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of strings, not {value!r}")
    return tuple(value)


def _mapping(what: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping, not {value!r}")
    return dict(value)


def _str_map(what: str, value: Any) -> dict[str, str]:
    mapping = _mapping(what, value)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise TypeError(f"{what} must map strings to strings, not {value!r}")
    return mapping


def _labels(value: Any) -> dict[str, str]:
    labels = _str_map("labels", value)
    for key, text in labels.items():
        if not is_label_key(key) or not is_label_value(text):
            raise ValueError(f"invalid label {key}={text!r}: see Kubernetes' rules for label keys and values")
    return labels


def _list(what: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list, not {value!r}")
    return list(value)


def _ref(what: str, value: Any, kinds: tuple[str, ...] = ("secret", "config_map")) -> SecretRef:
    mapping = _mapping(what, value)
    kind = next((k for k in kinds if k in mapping), None)
    if kind is None or set(mapping) != {kind, "key"}:
        shapes = " or ".join(f"{{{k!r}: NAME, 'key': KEY}}" for k in kinds)
        raise ValueError(f"{what} must be {shapes}, not {value!r}")
    return SecretRef(kind, _str(f"{what} {kind}", mapping[kind]), _str(f"{what} key", mapping["key"]))


def _env_value(name: str, value: Any) -> str | SecretRef:
    if isinstance(value, str):
        return value
    return _ref(f"env {name}", value)


def _env_from(item: Any) -> tuple[str, str]:
    mapping = _mapping("env_from item", item)
    if len(mapping) != 1 or next(iter(mapping)) not in ("secret", "config_map"):
        raise ValueError(f"env_from items must be {{'secret': NAME}} or {{'config_map': NAME}}, not {item!r}")
    kind, name = next(iter(mapping.items()))
    return kind, _str(f"env_from {kind}", name)
