"""taskmesh's Kubernetes Job runner: ``@task(runner="k8s", runner_options={...})``.

Installing this distribution registers the ``k8s`` runner through the ``taskmesh`` entry-point group.
The Kubernetes client is imported when a runner is built, not when this package is imported (every
worker loads the entry points, whether or not its tasks use Kubernetes).
"""

from typing import TYPE_CHECKING, Any

from .options import JobOptions, K8sConfig, SecretRef
from .plugin import K8sPlugin

if TYPE_CHECKING:
    from .runner import K8sRunner, KubernetesJobFailed, RemoteTraceback

_LAZY = ("K8sRunner", "KubernetesJobFailed", "RemoteTraceback")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["JobOptions", "K8sConfig", "K8sPlugin", "K8sRunner", "KubernetesJobFailed", "RemoteTraceback", "SecretRef"]
