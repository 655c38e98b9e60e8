"""Tasks the benchmark's worker runs in child processes: the subprocess runner imports a task from
its module, so these live in a module of their own rather than in ``worker_proc.py`` (run as ``__main__``)."""

from __future__ import annotations

from taskmesh import task


@task(name="bench.noop_subprocess", runner="subprocess")
def noop_subprocess() -> None:
    return None
