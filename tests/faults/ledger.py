"""The fault tests' ledger, kept outside the Redis under test, and the checker that reads it.

The ledger is a directory of append-only JSON-lines files, one per process, so lines written by
processes killed at any moment never interleave. Tasks write a ``start`` line when their body begins
and a ``finish`` line just before it returns; producers write ``enqueued`` once ``enqueue`` returned.

The checker compares the ledger, the job records and the event stream of the queue, and counts:

- lost: an acknowledged job with no record, or a record no state set holds (it would never run);
- inconsistent: a job held by a state set other than (or besides) the one its record names;
- stuck: a job not in its expected final state when the test's bound ran out;
- duplicate results: a job whose stream holds more than one ``completed``/``failed`` event;
- unfenced results: a recorded result that is not the last holder's (by fencing token);
- unpaired runs: a ``finish`` line with no ``start`` line of the same run, or a recorded result whose
  run has no ``start`` or no ``finish`` line (a ledger line went missing);
- torn lines: ledger lines that do not parse (each line is one ``write`` of a whole line, so there
  should be none: a line that does not parse means the ledger cannot be trusted);
- unexpected: a job in Redis or the ledger that was never acknowledged;
- duplicate executions (reported, allowed): a job whose body finished more than once;
- reruns (reported, allowed): a job whose body started more than once;
- stalls (reported): lost leases, summed over the job records.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from taskmesh import Client, Job, JobState

LEDGER_ENV = "FAULTS_LEDGER"
STATE_SETS = ("waiting", "delayed", "active", "completed", "failed", "cancelled")


def record(event: str, job_id: str, **fields: Any) -> None:
    """Append one line to this process's ledger file in one ``write`` of the whole line (a kill cannot
    leave half of it: a line that does not parse fails :meth:`Verdict.assert_sound`)."""
    directory = os.environ[LEDGER_ENV]
    line = {"event": event, "job": job_id, "pid": os.getpid(), "t": time.time(), **fields}
    fd = os.open(os.path.join(directory, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def record_run(event: str, job: Job, **fields: Any) -> None:
    """A task's ``start``/``finish`` line: job id, attempt and fencing token of this run."""
    record(event, job.id, attempt=job.attempt, token=job.token, **fields)


def run_result(job: Job) -> dict[str, int]:
    """What the fault tasks return: who ran them, under which token."""
    return {"pid": os.getpid(), "token": job.token}


@dataclass
class Ledger:
    """The ledger directory of one test."""

    path: Path

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """All lines of every file, oldest first, and the number of lines that do not parse."""
        lines: list[dict[str, Any]] = []
        torn = 0
        for file in sorted(self.path.glob("*.jsonl")):
            for raw in file.read_text().splitlines():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    torn += 1
        lines.sort(key=lambda line: float(line["t"]))
        return lines, torn

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.read()[0] if line["event"] == event]

    def count(self, event: str, pid: int | None = None) -> int:
        return sum(1 for line in self.events(event) if pid is None or line["pid"] == pid)


@dataclass
class Verdict:
    """What the checker found; ``summary()`` is what the tests report."""

    expected: int
    states: dict[str, int]
    lost: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicate_results: list[str] = field(default_factory=list)
    unfenced_results: list[str] = field(default_factory=list)
    unpaired_runs: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    duplicate_executions: dict[str, int] = field(default_factory=dict)
    reruns: dict[str, int] = field(default_factory=dict)
    stalls: int = 0
    torn_lines: int = 0

    def assert_sound(self) -> None:
        """The guarantee: nothing lost, stuck, recorded twice, recorded from a stale holder or unexpected,
        checked on a ledger with every line readable and every run's lines paired."""
        assert not self.torn_lines, f"{self.torn_lines} ledger line(s) do not parse: the ledger cannot be trusted"
        assert not self.unpaired_runs, f"runs with a ledger line missing: {self.unpaired_runs[:20]}"
        assert not self.untracked, f"the event stream lost the start of {len(self.untracked)} job(s); raise maxlen"
        assert not self.lost, f"lost: {self.lost[:20]}"
        assert not self.inconsistent, f"state sets disagree with the records: {self.inconsistent[:20]}"
        assert not self.stuck, f"stuck: {self.stuck[:20]}"
        assert not self.duplicate_results, f"recorded twice: {self.duplicate_results[:20]}"
        assert not self.unfenced_results, f"result not from the last holder: {self.unfenced_results[:20]}"
        assert not self.unexpected, f"unexpected: {self.unexpected[:20]}"

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": self.expected,
            "states": self.states,
            "lost": len(self.lost),
            "inconsistent": len(self.inconsistent),
            "stuck": len(self.stuck),
            "duplicate_results": len(self.duplicate_results),
            "unfenced_results": len(self.unfenced_results),
            "unpaired_runs": len(self.unpaired_runs),
            "unexpected": len(self.unexpected),
            "duplicate_executions": len(self.duplicate_executions),
            "extra_executions": sum(n - 1 for n in self.duplicate_executions.values()),
            "duplicate_execution_sample": dict(sorted(self.duplicate_executions.items())[:5]),
            "reruns": len(self.reruns),
            "stalls": self.stalls,
            "torn_ledger_lines": self.torn_lines,
        }


def check(
    client: Client,
    ledger: Ledger,
    expected: Iterable[str],
    *,
    queue: str = "default",
    final: Mapping[str, JobState] | None = None,
) -> Verdict:
    """Check every ``expected`` job against Redis and the ledger. Jobs end ``completed`` unless ``final`` says."""
    wanted = list(dict.fromkeys(expected))
    final = final or {}
    keys = client.keys(queue)
    with client.redis.pipeline(transaction=True) as pipe:  # one consistent snapshot of the queue
        pipe.hgetall(keys.jobs)
        for name in STATE_SETS:
            pipe.zrange(getattr(keys, name), 0, -1)
        pipe.xrange(keys.events)
        raw_records, *sets, raw_events = pipe.execute()
    records = cast(dict[str, str], raw_records)
    members = {name: set(cast(list[str], ids)) for name, ids in zip(STATE_SETS, sets, strict=True)}
    events = cast(list[tuple[str, dict[str, str]]], raw_events)
    lines, torn = ledger.read()

    verdict = Verdict(expected=len(wanted), states=dict(Counter(json.loads(raw)["state"] for raw in records.values())))
    verdict.torn_lines = torn
    outcomes = Counter(f["job"] for _, f in events if f["event"] in ("completed", "failed"))
    enqueued = {f["job"] for _, f in events if f["event"] == "enqueued"}
    starts = [line for line in lines if line["event"] == "start"]
    finishes = Counter(line["job"] for line in lines if line["event"] == "finish")
    last_token: dict[str, int] = {}
    finished_runs = {(line["job"], line["pid"], line["token"]) for line in lines if line["event"] == "finish"}
    started_runs = {(line["job"], line["pid"], line["token"]) for line in starts}
    unpaired = {job_id for job_id, _, _ in finished_runs - started_runs}
    for line in starts:
        last_token[line["job"]] = max(last_token.get(line["job"], 0), int(line["token"]))

    wanted_set = set(wanted)
    for job_id in wanted:
        raw = records.get(job_id)
        held_by = [name for name, ids in members.items() if job_id in ids]
        if raw is None or not held_by:
            verdict.lost.append(job_id)
            continue
        if job_id not in enqueued:
            verdict.untracked.append(job_id)
        rec = json.loads(raw)
        if held_by != [rec["state"]]:
            verdict.inconsistent.append(job_id)
        verdict.stalls += int(rec.get("stalls", 0))
        if rec["state"] != final.get(job_id, JobState.COMPLETED):
            verdict.stuck.append(job_id)
        if outcomes[job_id] > 1:
            verdict.duplicate_results.append(job_id)
        if rec["state"] == "completed" and rec.get("result") is not None:
            result = json.loads(rec["result"])
            run = (job_id, result.get("pid"), result.get("token"))
            if run not in started_runs or run not in finished_runs:
                unpaired.add(job_id)
            if result.get("token") != last_token.get(job_id):
                verdict.unfenced_results.append(job_id)
    seen = set(records) | {line["job"] for line in lines}
    verdict.unexpected = sorted(seen - wanted_set)
    verdict.unpaired_runs = sorted(unpaired)
    verdict.duplicate_executions = {job: n for job, n in finishes.items() if n > 1}
    verdict.reruns = {job: n for job, n in Counter(line["job"] for line in starts).items() if n > 1}
    return verdict


def settle(
    client: Client,
    ledger: Ledger,
    expected: Iterable[str],
    *,
    timeout: float,
    queue: str = "default",
    final: Mapping[str, JobState] | None = None,
) -> Verdict:
    """Wait until every expected job is finished, at most ``timeout`` seconds, then :func:`check`:
    a job not in its final state by then is stuck."""
    wanted = list(dict.fromkeys(expected))
    deadline = time.monotonic() + timeout
    while True:
        counts = client.counts(queue)
        if counts["completed"] + counts["failed"] >= len(wanted) or time.monotonic() > deadline:
            verdict = check(client, ledger, wanted, queue=queue, final=final)
            if not (verdict.stuck or verdict.lost) or time.monotonic() > deadline:
                return verdict
        time.sleep(0.02)  # polling Redis for the end state, bounded by the deadline
