"""taskmesh benchmark: enqueue, drain, latency, Redis work and memory per job, worker RSS.

    .venv/bin/python bench/bench.py [--redis-url URL] [--n 10000] [--out bench/results/latest.json]

Without ``--redis-url`` a private redis-server is started in a temporary directory
(AOF ``appendfsync everysec``, as taskmesh ships; ``--no-aof`` turns AOF off).
With ``--redis-url`` all keys live under a unique prefix and are deleted at the end.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from redis.utils import HIREDIS_AVAILABLE

import taskmesh
from taskmesh import Call, Client, Settings, set_default_client, task
from taskmesh.embedded import EmbeddedRedis
from taskmesh.store import scripts

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker_proc.py"
QUEUE = "default"
SUBPROCESS_CONCURRENCY = 10


@task(name="bench.noop_async")
async def noop_async() -> None:
    """Producer-side twin of the worker's task (same name), so ``task.enqueue`` can be measured."""


# -- Redis server and bookkeeping -------------------------------------------------


@contextlib.contextmanager
def redis_server(url: str | None, aof: bool) -> Iterator[tuple[str, str]]:
    """Yield (url, description): the given URL, or a private server in a temporary directory."""
    if url is not None:
        yield url, "external"
        return
    with tempfile.TemporaryDirectory(prefix="taskmesh-bench-") as data:
        extra = () if aof else ("--appendonly", "no")
        with EmbeddedRedis(data, extra_args=extra) as server:
            yield server.url, "embedded, " + ("AOF appendfsync everysec" if aof else "no AOF")


def delete_prefix(conn: redis.Redis, prefix: str) -> int:
    """Delete every key of ``prefix`` (SCAN + DEL; never FLUSH)."""
    deleted = 0
    batch: list[str] = []
    for key in conn.scan_iter(match=f"{{{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(conn.delete(*batch))
            batch = []
    if batch:
        deleted += int(conn.delete(*batch))
    return deleted


def commandstats(conn: redis.Redis) -> dict[str, tuple[int, int]]:
    """Command name -> (calls, usec), as reported by INFO commandstats (script-inner commands included)."""
    raw: dict[str, Any] = conn.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in raw.items()}


def stats_delta(
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    ignore: frozenset[str] | set[str] = frozenset({"info"}),
) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 > 0 and name not in ignore:
            out[name] = (calls - c0, usec - u0)
    return out


def per_job(delta: dict[str, tuple[int, int]], n: int) -> dict[str, Any]:
    total = sum(c for c, _ in delta.values())
    script_calls = sum(delta.get(name, (0, 0))[0] for name in ("evalsha", "eval"))
    script_usec = sum(delta.get(name, (0, 0))[1] for name in ("evalsha", "eval"))
    return {
        "script_calls_per_job": script_calls / n,
        "commands_per_job": total / n,
        "script_server_usec_per_job": script_usec / n,
        "commands": {name: round(c / n, 3) for name, (c, _) in sorted(delta.items(), key=lambda kv: -kv[1][0])},
    }


class Bench:
    def __init__(self, url: str, n: int, chunk: int, repeat: int, samples: int) -> None:
        self.url = url
        self.n = n
        self.chunk = chunk
        self.repeat = repeat
        self.samples = samples
        self.run_id = uuid.uuid4().hex[:8]
        self.admin = redis.Redis.from_url(url, decode_responses=True)
        self._prefixes: list[str] = []

    def prefix(self, name: str) -> str:
        prefix = f"bench-{self.run_id}-{name}"
        self._prefixes.append(prefix)
        return prefix

    def client(self, prefix: str, **settings: Any) -> Client:
        return Client(settings=Settings(redis_url=self.url, prefix=prefix, **settings))

    def cleanup(self) -> None:
        for prefix in self._prefixes:
            delete_prefix(self.admin, prefix)
        self._prefixes.clear()

    # -- 1-3: producer side ---------------------------------------------------------

    def producer_rates(self, blocks: int = 10) -> dict[str, Any]:
        """PING, ``task.enqueue()`` and ``client.enqueue(name)``, n calls each, interleaved in blocks.

        Interleaving makes the enqueue/PING ratio robust to load that changes during the run.
        """
        conn = redis.Redis.from_url(self.url, decode_responses=True)
        client = self.client(self.prefix(f"enq-{uuid.uuid4().hex[:4]}"))
        set_default_client(client)
        bare = conn.connection_pool.get_connection()

        def bare_ping() -> Any:
            bare.send_command("PING")
            return bare.read_response()

        calls: dict[str, Callable[[], Any]] = {
            "ping": conn.ping,
            "task": noop_async.enqueue,
            "client": lambda: client.enqueue("bench.noop_async"),
            # For reference: PING without redis-py's per-command layers, which the client's script calls skip.
            "ping_bare": bare_ping,
        }
        seconds = dict.fromkeys(calls, 0.0)
        try:
            conn.ping()
            client.enqueue("bench.warmup")  # connect, load scripts, register the queue
            before = commandstats(self.admin)
            for _ in range(blocks):
                for name, fn in calls.items():
                    t0 = time.perf_counter()
                    for _ in range(self.n // blocks):
                        fn()
                    seconds[name] += time.perf_counter() - t0
            done = self.n // blocks * blocks
            work = per_job(stats_delta(before, commandstats(self.admin), ignore={"info", "ping"}), 2 * done)
            rates = {name: done / spent for name, spent in seconds.items()}
            return {**rates, "ratio": rates["task"] / rates["ping"], "work": work}
        finally:
            conn.connection_pool.release(bare)
            set_default_client(None)
            client.close()
            conn.close()
            self.cleanup()

    def async_rates(self, blocks: int = 10) -> dict[str, Any]:
        """asyncio PING and ``await task.aenqueue()`` from one coroutine, n calls each, interleaved in blocks."""

        async def measure() -> dict[str, Any]:
            conn = aredis.Redis.from_url(self.url, decode_responses=True)
            client = self.client(self.prefix(f"aenq-{uuid.uuid4().hex[:4]}"))
            calls: dict[str, Callable[[], Any]] = {"ping": conn.ping, "aenqueue": noop_async.aenqueue}
            seconds = dict.fromkeys(calls, 0.0)
            set_default_client(client)
            try:
                await conn.ping()
                await client.aenqueue("bench.warmup")
                for _ in range(blocks):
                    for name, fn in calls.items():
                        t0 = time.perf_counter()
                        for _ in range(self.n // blocks):
                            await fn()
                        seconds[name] += time.perf_counter() - t0
                rates = {name: self.n // blocks * blocks / spent for name, spent in seconds.items()}
                return {**rates, "ratio": rates["aenqueue"] / rates["ping"]}
            finally:
                set_default_client(None)
                await client.aclose()
                await conn.aclose()

        try:
            return asyncio.run(measure())
        finally:
            self.cleanup()

    def fill(self, client: Client, task_name: str, n: int) -> float:
        """Bulk-enqueue ``n`` no-op jobs in chunks; returns jobs/s."""
        calls = [Call(task_name) for _ in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, self.chunk):
            client.enqueue_many(calls[i : i + self.chunk])
        return n / (time.perf_counter() - t0)

    def bulk_rate(self) -> tuple[float, dict[str, Any]]:
        client = self.client(self.prefix(f"bulk-{uuid.uuid4().hex[:4]}"))
        try:
            client.enqueue("bench.warmup")
            before = commandstats(self.admin)
            rate = self.fill(client, "bench.noop_async", self.n)
            return rate, per_job(stats_delta(before, commandstats(self.admin)), self.n)
        finally:
            client.close()
            self.cleanup()

    # -- 4: drain -------------------------------------------------------------------

    def drain(self, task_name: str, concurrency: int, n: int | None = None, **settings: Any) -> dict[str, Any]:
        """Fill a fresh queue with n jobs (``--n`` by default), then burst-drain it with one worker process."""
        n = self.n if n is None else n
        prefix = self.prefix(f"drain-{uuid.uuid4().hex[:4]}")
        client = self.client(prefix, **settings)
        try:
            self.fill(client, task_name, n)
            before = commandstats(self.admin)
            done = run_worker(self.url, prefix, concurrency, burst=True, settings=settings)
            delta = stats_delta(before, commandstats(self.admin))
            counts = client.counts(QUEUE)
            if counts["completed"] != n or done["completed"] != n:
                raise RuntimeError(f"drain incomplete: counts {counts}, worker {done}")
            done["rate"] = n / done["dispatch_seconds"]
            done["work"] = per_job(delta, n)
            return done
        finally:
            client.close()
            self.cleanup()

    # -- 5 and 8: latency on an idle worker, idle RSS ----------------------------------

    def latency(self, task_name: str) -> dict[str, Any]:
        prefix = self.prefix(f"lat-{uuid.uuid4().hex[:4]}")
        client = self.client(prefix)
        proc = start_worker(self.url, prefix, 10, burst=False, settings={})
        try:
            ready = read_event(proc, "ready", timeout=30)
            time.sleep(0.3)  # let the worker go idle (blocked on its wake-up list)
            idle_rss_kb = rss_kb(int(ready["pid"]))
            client.enqueue(task_name).result(timeout=10)  # first job: connections, scripts
            samples, calls = [], []
            for _ in range(self.samples):
                time.sleep(0.002)  # the worker is idle again: blocked on its wake-up list
                t0 = time.time()
                handle = client.enqueue(task_name)
                calls.append(time.time() - t0)
                started = handle.result(timeout=10)
                samples.append(float(started) - t0)
            idle_rss_after_kb = rss_kb(int(ready["pid"]))
            proc.send_signal(signal.SIGTERM)
            done = read_event(proc, "done", timeout=30)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            client.close()
            self.cleanup()
        ms = sorted(s * 1000 for s in samples)
        return {
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1],
            "enqueue_call_p50_ms": percentile(sorted(c * 1000 for c in calls), 50),
            "idle_rss_kb": idle_rss_kb,
            "idle_rss_after_kb": idle_rss_after_kb,
            "maxrss_kb": done["maxrss_kb"],
        }

    # -- 7: memory per retained completed job ------------------------------------------

    def memory(self) -> dict[str, Any]:
        """used_memory delta / n after enqueueing and draining n jobs, all retained (events too)."""
        settings = {"completed_keep": -1, "completed_age": -1.0, "events_maxlen": 4 * self.n}
        prefix = self.prefix(f"mem-{uuid.uuid4().hex[:4]}")
        client = self.client(prefix, **settings)
        try:
            for name in scripts.SCRIPT_NAMES:
                self.admin.script_load(scripts.source(name))
            base = int(self.admin.info("memory")["used_memory"])
            self.fill(client, "bench.noop_async", self.n)
            done = run_worker(self.url, prefix, 100, burst=True, settings=settings)
            if done["completed"] != self.n:
                raise RuntimeError(f"memory run incomplete: {done}")
            used = int(self.admin.info("memory")["used_memory"]) - base
            keys = client.keys(QUEUE)
            by_key = {}
            for name in ("jobs", "payloads", "completed", "events"):
                usage = self.admin.memory_usage(getattr(keys, name), samples=0) or 0
                by_key[name] = round(int(usage) / self.n, 1)
            last = str(self.admin.zrange(keys.completed, -1, -1)[0])
            sample = self.admin.hget(keys.jobs, last)
            return {
                "settings": settings,
                "bytes_per_job": used / self.n,
                "by_key_bytes_per_job": by_key,
                "events_per_job": int(self.admin.xlen(keys.events)) / self.n,
                "record_example": sample,
            }
        finally:
            client.close()
            self.cleanup()


# -- worker processes ------------------------------------------------------------------


def start_worker(
    url: str, prefix: str, concurrency: int, *, burst: bool, settings: dict[str, Any]
) -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), "--redis-url", url, "--prefix", prefix, "--concurrency", str(concurrency)]
    args += ["--settings", json.dumps(settings)] + (["--burst"] if burst else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_event(proc: subprocess.Popen[str], event: str, timeout: float) -> dict[str, Any]:
    """The next JSON line from the worker naming ``event`` (bounded wait)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"worker did not report {event!r} within {timeout}s")
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"worker exited before {event!r}: {err}")
            record: dict[str, Any] = json.loads(line)
            if record.get("event") == event:
                return record


def run_worker(url: str, prefix: str, concurrency: int, *, burst: bool, settings: dict[str, Any]) -> dict[str, Any]:
    proc = start_worker(url, prefix, concurrency, burst=burst, settings=settings)
    try:
        done = read_event(proc, "done", timeout=300)
        proc.wait(30)
        return done
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


# -- report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    value: float
    unit: str
    target: str
    ok: bool | None

    def render(self) -> tuple[str, str, str, str]:
        value = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
        ok = "" if self.ok is None else ("yes" if self.ok else "NO")
        return self.figure, f"{value} {self.unit}".strip(), self.target, ok


def print_table(rows: list[Row]) -> None:
    cells = [("figure", "value", "target", "ok?"), *(row.render() for row in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    for i, c in enumerate(cells):
        print("  ".join(text.ljust(w) for text, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summary(runs: list[float]) -> dict[str, Any]:
    return {"runs": runs, "median": median(runs)}


def run(args: argparse.Namespace, url: str, server: str) -> dict[str, Any]:
    bench = Bench(url, args.n, args.chunk, args.repeat, args.samples)
    info = bench.admin.info("server")
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": args.n,
        "chunk": args.chunk,
        "repeat": args.repeat,
        "latency_samples": args.samples,
        "server": server,
        "redis_version": info.get("redis_version"),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "hiredis": HIREDIS_AVAILABLE,
        "cpus": os.cpu_count(),
        "taskmesh": str(Path(taskmesh.__file__).resolve().parent),
        "commit": git_commit(),
    }
    try:
        say("PING and one-call enqueue (interleaved)")
        producer = [bench.producer_rates() for _ in range(args.repeat)]
        results["ping"] = summary([p["ping"] for p in producer])
        results["enqueue_one"] = {**summary([p["task"] for p in producer]), "work": producer[0]["work"]}
        results["enqueue_one_by_name"] = summary([p["client"] for p in producer])
        results["enqueue_ping_ratio"] = summary([p["ratio"] for p in producer])
        results["ping_bare"] = summary([p["ping_bare"] for p in producer])

        say("asyncio PING and one-call aenqueue (interleaved)")
        producer = [bench.async_rates() for _ in range(args.repeat)]
        results["async_ping"] = summary([p["ping"] for p in producer])
        results["aenqueue_one"] = summary([p["aenqueue"] for p in producer])
        results["aenqueue_ping_ratio"] = summary([p["ratio"] for p in producer])

        say(f"bulk enqueue, {args.chunk} per call")
        bulk_runs = [bench.bulk_rate() for _ in range(args.repeat)]
        results["enqueue_bulk"] = {
            "runs": [r for r, _ in bulk_runs],
            "median": median([r for r, _ in bulk_runs]),
            "work": bulk_runs[0][1],
        }

        results["drain"] = {}
        for kind in ("async", "sync"):
            for concurrency in (10, 100):
                say(f"drain {args.n} {kind} no-op jobs, concurrency {concurrency}")
                runs = [bench.drain(f"bench.noop_{kind}", concurrency) for _ in range(args.repeat)]
                results["drain"][f"{kind}_c{concurrency}"] = {
                    "runs": [r["rate"] for r in runs],
                    "median": median([r["rate"] for r in runs]),
                    "shutdown_seconds": [round(r["run_seconds"] - r["dispatch_seconds"], 3) for r in runs],
                    "cpu_seconds": [round(r["dispatch_cpu_seconds"], 3) for r in runs],
                    "maxrss_kb": max(r["maxrss_kb"] for r in runs),
                    "work": runs[0]["work"],
                }

        # A fork per job: fewer jobs keep the run short.
        sub_n = max(args.n // 10, 20)
        say(f"drain {sub_n} sync no-op jobs, subprocess runner, concurrency {SUBPROCESS_CONCURRENCY}")
        runs = [bench.drain("bench.noop_subprocess", SUBPROCESS_CONCURRENCY, sub_n) for _ in range(args.repeat)]
        results["drain"][f"subprocess_c{SUBPROCESS_CONCURRENCY}"] = {
            "n": sub_n,
            "runs": [r["rate"] for r in runs],
            "median": median([r["rate"] for r in runs]),
            "cpu_seconds": [round(r["dispatch_cpu_seconds"], 3) for r in runs],
            "maxrss_kb": max(r["maxrss_kb"] for r in runs),
        }

        results["latency"] = {}
        for kind in ("async", "sync"):
            say(f"enqueue->start latency, {kind} task, {args.samples} samples")
            results["latency"][kind] = bench.latency(f"bench.stamp_{kind}")

        say("memory per retained completed job")
        results["memory"] = bench.memory()
    finally:
        bench.cleanup()
        bench.admin.close()
    results["rows"] = [dataclasses.asdict(row) for row in rows_of(results)]
    return results


def rows_of(r: dict[str, Any]) -> list[Row]:
    ping, one, bulk = r["ping"]["median"], r["enqueue_one"]["median"], r["enqueue_bulk"]["median"]
    ratio = r["enqueue_ping_ratio"]["median"]
    d, lat, mem, n = r["drain"], r["latency"], r["memory"], r["n"]
    enq, drain10 = r["enqueue_one"]["work"], d["async_c10"]["work"]
    calls = enq["script_calls_per_job"] + drain10["script_calls_per_job"]
    rows = [
        Row("PING round trips (1 sync client)", ping, "/s", "baseline", None),
        Row("enqueue, one call per job (task.enqueue)", one, "jobs/s", ">= 0.7 x PING", ratio >= 0.7),
        Row("  ratio to PING (median of interleaved runs)", ratio, "x", ">= 0.7", ratio >= 0.7),
        Row("enqueue, one call per job (client.enqueue)", r["enqueue_one_by_name"]["median"], "jobs/s", "", None),
        Row("PING on a bare connection (no client layers)", r["ping_bare"]["median"], "/s", "reference", None),
        Row("asyncio PING round trips (1 coroutine)", r["async_ping"]["median"], "/s", "", None),
        Row("aenqueue, one call per job (await task.aenqueue)", r["aenqueue_one"]["median"], "jobs/s", "", None),
        Row("  ratio to asyncio PING", r["aenqueue_ping_ratio"]["median"], "x", "", None),
        Row(f"bulk enqueue ({r['chunk']} per enqueue_many)", bulk, "jobs/s", ">= 40,000", bulk >= 40_000),
    ]
    for kind in ("async", "sync"):
        for concurrency, minimum in ((10, 8_000), (100, 15_000)):
            rate = d[f"{kind}_c{concurrency}"]["median"]
            figure = f"drain, {kind} no-op, concurrency {concurrency}"
            rows.append(Row(figure, rate, "jobs/s", f">= {minimum:,}", rate >= minimum))
    c = SUBPROCESS_CONCURRENCY
    sub, inline = d[f"subprocess_c{c}"]["median"], d[f"sync_c{c}"]["median"]
    rows += [
        Row(f"drain, sync no-op, subprocess runner, concurrency {c}", sub, "jobs/s", "", None),
        Row(f"  per-job overhead vs inline (sync, c={c})", (1 / sub - 1 / inline) * 1000, "ms", "", None),
    ]
    latency_targets: dict[tuple[str, str], float] = {("async", "p50"): 0.7, ("async", "p99"): 2.0}
    for kind in ("async", "sync"):
        for p in ("p50", "p99"):
            value: float = lat[kind][f"{p}_ms"]
            figure = f"enqueue->start {p} (idle worker, {kind} task)"
            target = latency_targets.get((kind, p))
            if target is None:
                rows.append(Row(figure, value, "ms", "", None))
            else:
                rows.append(Row(figure, value, "ms", f"<= {target}", value <= target))
    cpu100 = median(d["async_c100"]["cpu_seconds"]) / n * 1e6
    rows += [
        Row("script calls/job, enqueue + drain (c=10)", calls, "", "<= 3", calls <= 3),
        Row(
            "Redis commands/job, enqueue + drain (c=10, incl. in scripts)",
            enq["commands_per_job"] + drain10["commands_per_job"],
            "",
            "",
            None,
        ),
        Row("Redis script time/job, one-call enqueue", enq["script_server_usec_per_job"], "us", "", None),
        Row(
            "Redis script time/job, drain (async c=100)",
            d["async_c100"]["work"]["script_server_usec_per_job"],
            "us",
            "",
            None,
        ),
        Row("worker CPU time/job, drain (async c=100)", cpu100, "us", "", None),
        Row(
            "Redis memory per retained completed job",
            mem["bytes_per_job"],
            "bytes",
            "<= 1,024",
            mem["bytes_per_job"] <= 1024,
        ),
        Row("peak worker RSS (drain runs)", max(v["maxrss_kb"] for v in d.values()) / 1024, "MiB", "report", None),
        Row("idle worker RSS", lat["async"]["idle_rss_kb"] / 1024, "MiB", "report", None),
    ]
    return rows


def git_commit() -> str:
    """Commit of the taskmesh being measured, ``+dirty`` with uncommitted changes; "unknown" outside git."""
    where = Path(taskmesh.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=where)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True, cwd=where)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def say(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="taskmesh benchmark (see bench/README.md)")
    parser.add_argument("--redis-url", help="use this Redis (keys under a unique prefix, deleted afterwards)")
    parser.add_argument("--n", type=int, default=10_000, help="jobs per enqueue/drain run (default 10000)")
    parser.add_argument("--chunk", type=int, default=1_000, help="jobs per enqueue_many call (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--samples", type=int, default=1_000, help="latency samples (default 1000)")
    parser.add_argument("--no-aof", action="store_true", help="private server without AOF")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()
    with redis_server(args.redis_url, aof=not args.no_aof) as (url, server):
        say(f"redis: {url} ({server})")
        results = run(args, url, server)
    print_table([Row(**row) for row in results["rows"]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nserver: {results['server']}, redis {results['redis_version']}, hiredis {results['hiredis']}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
