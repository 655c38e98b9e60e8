"""The benchmark script still runs end to end (tiny sizes; the figures themselves are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"


def test_benchmark_runs_end_to_end_and_reports_every_figure(taskmesh_redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--redis-url", taskmesh_redis_url, "--n", "200", "--repeat", "1", "--samples", "10", "--out", str(out)]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert set(results["drain"]) == {"async_c10", "async_c100", "sync_c10", "sync_c100", "subprocess_c10"}
    assert all(run > 0 for figure in results["drain"].values() for run in figure["runs"])
    assert results["latency"]["async"]["p50_ms"] > 0
    assert results["memory"]["events_per_job"] == 3
    figures = {row["figure"] for row in results["rows"]}
    assert {
        "  ratio to PING (median of interleaved runs)",
        "Redis memory per retained completed job",
        "idle worker RSS",
        "drain, sync no-op, subprocess runner, concurrency 10",
        "  per-job overhead vs inline (sync, c=10)",
    } <= figures
    assert "ratio to PING" in done.stdout
