"""Small helpers shared by test modules: a direct ``step`` script call, and mypy run on a snippet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import taskmesh
from taskmesh import Client, Settings
from taskmesh.store import scripts
from taskmesh.store.scripts import Leased, Update


def step(
    client: Client, want: int, updates: list[Update] | None = None, settings: Settings | None = None
) -> list[Leased]:
    """One ``step`` call as worker w1: apply ``updates`` (all must be accepted), lease up to ``want`` jobs."""
    args = scripts.step_args(settings or client.settings, "w1", want, updates or [])
    accepted, leased, _ = scripts.parse_step(scripts.call(client.redis, "step", client.keys("default").all, args))
    assert all(accepted)
    return leased


def mypy_snippet(tmp_path: Path, snippet: str) -> tuple[dict[str, int], dict[int, str], str]:
    """Run ``mypy --strict`` on ``snippet`` (lines ending ``  # <label>`` are labelled): the labels' line numbers,
    what mypy reported per line, and its whole output. Third-party packages are skipped (seen as Any) to keep
    the run short; taskmesh itself is analysed."""
    (tmp_path / "snippet.py").write_text(snippet)
    line_of = {text.split("# ")[-1]: n for n, text in enumerate(snippet.splitlines(), start=1) if "  # " in text}
    (tmp_path / "mypy.ini").write_text("[mypy]\n[mypy-redis.*,pluggy.*,tenacity.*,croniter.*]\nfollow_imports = skip\n")
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--no-color-output"]
    command += ["--config-file", "mypy.ini", "--cache-dir", "cache", "snippet.py"]
    env = {**os.environ, "MYPYPATH": str(Path(taskmesh.__file__).resolve().parent.parent)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    reported: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("snippet.py:"):
            number = int(line.split(":")[1])
            reported[number] = reported.get(number, "") + line
    return line_of, reported, proc.stdout + proc.stderr
