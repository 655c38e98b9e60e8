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


def test_a_producer_never_imports_the_kubernetes_client() -> None:
    code = "import sys, taskmesh; taskmesh.Client('redis://127.0.0.1:1'); print('kubernetes' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_the_version_is_written_once() -> None:
    assert taskmesh.__version__ == version("taskmesh")
    written = [p for p in (ROOT / "taskmesh").rglob("*.py") if taskmesh.__version__ in p.read_text()]
    assert written == [ROOT / "taskmesh/_version.py"]
