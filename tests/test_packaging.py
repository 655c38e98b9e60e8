"""What ``pip install taskmesh`` brings: the core's dependencies only (the Kubernetes client comes with
the ``k8s`` extra), and one version everywhere."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import requires, version
from pathlib import Path

import taskmesh

ROOT = Path(__file__).resolve().parent.parent


def core_requirements() -> list[str]:
    return [req for req in requires("taskmesh") or [] if "extra ==" not in req]


def test_the_core_install_brings_no_kubernetes_client_and_the_k8s_extra_brings_the_runner() -> None:
    names = [re.split(r"[\[<>=; ]", req, maxsplit=1)[0].lower() for req in core_requirements()]
    assert names == ["redis", "pluggy", "croniter", "tenacity", "typing-extensions"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["k8s"] == ["taskmesh-k8s>=0.1"]
    plugin = tomllib.loads((ROOT / "plugins/taskmesh-k8s/pyproject.toml").read_text())["project"]
    assert any(req.startswith("kubernetes") for req in plugin["dependencies"])


PRODUCER = """
import sys, taskmesh
client = taskmesh.Client("redis://127.0.0.1:1")
@taskmesh.task(name="packaging.add")
def add(x: int, y: int) -> int:
    return x + y
add.options(delay=1)
loaded = sorted({name.split(".")[0] if not name.startswith("taskmesh.") else ".".join(name.split(".")[:2])
                 for name in sys.modules})
print(" ".join(loaded))
"""


def test_a_producer_loads_no_worker_no_plugin_manager_and_no_kubernetes_client() -> None:
    done = subprocess.run([sys.executable, "-c", PRODUCER], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(done.stdout.split())
    assert "taskmesh.client" in loaded
    assert not loaded & {"taskmesh.dispatch", "taskmesh.runners", "taskmesh.sinks", "pluggy", "tenacity", "kubernetes"}


def test_the_worker_and_the_hook_marker_are_there_when_asked_for() -> None:
    from taskmesh import Worker, hookimpl
    from taskmesh.dispatch import Worker as Defined
    from taskmesh.plugins import hookimpl as marker

    assert (Worker, hookimpl) == (Defined, marker)


def test_the_version_is_written_once() -> None:
    assert taskmesh.__version__ == version("taskmesh")
    written = [p for p in (ROOT / "taskmesh").rglob("*.py") if taskmesh.__version__ in p.read_text()]
    assert written == [ROOT / "taskmesh/_version.py"]
