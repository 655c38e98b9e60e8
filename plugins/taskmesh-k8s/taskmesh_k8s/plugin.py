"""Registers the ``k8s`` runner through the ``taskmesh_register_runners`` hook.

Listed under the ``taskmesh`` entry-point group, this module is the plugin: its runner takes its
configuration from the environment (:meth:`K8sConfig.from_env`). :class:`K8sPlugin` registers one
with a given configuration instead (pass it to ``Worker.create(plugins=[...], entry_points=False)``).
Importing this module does not import the Kubernetes client; building the runner does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskmesh import Settings, hookimpl

from .options import taskmesh_declare_settings as taskmesh_declare_settings  # the plugin's settings

if TYPE_CHECKING:
    from taskmesh.runners import RunnerRegistry

    from .options import K8sConfig
    from .runner import K8sRunner

NAME = "k8s"


class K8sPlugin:
    """A plugin object registering a ``k8s`` runner with ``config`` (default: from the environment) and,
    when given, an existing ``ApiClient``."""

    def __init__(self, config: K8sConfig | None = None, api: Any = None) -> None:
        self.config = config
        self.api = api

    def build(self, settings: Settings) -> K8sRunner:
        from .runner import K8sRunner

        return K8sRunner(settings, self.config, self.api)

    @hookimpl
    def taskmesh_register_runners(self, register: RunnerRegistry) -> None:
        register.add(NAME, self.build)


@hookimpl
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    register.add(NAME, K8sPlugin().build)
