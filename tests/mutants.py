"""A small mutation check: does each guarantee have a test that fails without it?

Each mutant below is one small edit of the engine (a Lua script or the worker) that breaks one
guarantee, with the tests that should catch it. The check copies the working tree to a temporary
directory, runs those tests there unmutated (they must pass), then applies each mutant in turn and runs
its tests again: a mutant is *caught* when they fail and *survives* when they pass. Surviving mutants
are gaps in the suite. The checkout itself is never changed.

    ./dev mutants                  every mutant (about 15 minutes on 2 cores)
    ./dev mutants rate-boundary    only the named ones
    ./dev mutants --list           the catalogue

Exit status: 0 when every mutant was caught, 1 when one survived, 2 when a mutant no longer applies
(its text is gone from the source: update the catalogue) or the unmutated tests fail.
Not part of ``./dev test``: it runs the chosen tests once per mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP, LIB, SWEEP = "taskmesh/store/lua/step.lua", "taskmesh/store/lua/lib.lua", "taskmesh/store/lua/sweep.lua"
ENQUEUE, CRON = "taskmesh/store/lua/enqueue.lua", "taskmesh/store/lua/cron.lua"
INFLIGHT, OUTCOME = "taskmesh/dispatch/inflight.py", "taskmesh/runners/outcome.py"
#: The longest one mutant's tests may run; a mutant that makes them hang past it counts as caught.
TIMEOUT = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str
    path: str
    old: str  # occurs exactly once in ``path``
    new: str
    tests: tuple[str, ...]
    more: tuple[tuple[str, str, str], ...] = ()  # further edits of the same mutant: (path, old, new)

    @property
    def edits(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.path, self.old, self.new), *self.more)


MUTANTS = (
    # Fencing: only the current holder's reports count.
    Mutant("stale-token-report", "a stale holder's report is accepted", STEP,
           "if not rec or rec.state ~= 'active' or rec.token ~= token then",
           "if not rec or rec.state ~= 'active' then",
           ("tests/test_leases.py", "tests/faults/test_pause.py")),
    Mutant("stale-token-renew", "a stale holder renews a lease it lost", "taskmesh/store/lua/renew.lua",
           "rec.state == 'active' and rec.token == tokens[i]", "rec.state == 'active'",
           ("tests/test_leases.py", "tests/test_model.py")),
    Mutant("no-token-check-on-progress", "a stale run's progress is recorded (worker and script unchecked)", INFLIGHT,
           "if run is not None and run.job.token == token:", "if run is not None:",
           ("tests/test_leases.py",),
           more=((STEP, "or rec.token ~= token then", "then"),)),
    Mutant("lease-lost-unnoticed", "a run whose lease was taken over is never told", INFLIGHT,
           "if run is not None and run.job.token == token and not run.job.lease_lost:", "if False:",
           ("tests/test_leases.py",)),
    Mutant("lease-lost-not-raised", "a stale run's progress does not raise LeaseLost", "taskmesh/job.py",
           "if self.lease_lost:", "if False:",
           ("tests/test_leases.py",)),
    # Leases, stalls and attempts.
    Mutant("sweep-never-requeues", "expired leases are never recovered", SWEEP,
           "redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now,", "redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', 0,",
           ("tests/test_leases.py", "tests/test_model.py")),
    Mutant("stall-limit-off-by-one", "a job fails one stall early", SWEEP,
           "elseif rec.stalls > max_stalls then", "elseif rec.stalls >= max_stalls then",
           ("tests/test_model.py", "tests/test_recovery.py")),
    Mutant("stall-spends-attempt", "a stall recovery spends an attempt", SWEEP,
           "rec.attempt = rec.attempt - 1", "",
           ("tests/test_model.py", "tests/test_recovery.py")),
    Mutant("attempt-not-counted", "a lease does not count an attempt", STEP,
           "leased[i] = {id, token, rec.attempt + 1,", "leased[i] = {id, token, rec.attempt,",
           ("tests/test_engine.py", "tests/test_worker.py")),
    Mutant("hand-back-spends-attempt", "a hand-back spends an attempt", STEP,
           "        rec.attempt = rec.attempt - 1\n        push_waiting(id, rec)", "        push_waiting(id, rec)",
           ("tests/test_inline_runner.py",)),
    Mutant("defer-spends-attempt", "a deferral spends an attempt", STEP,
           "        rec.attempt = rec.attempt - 1\n        rec.error = value", "        rec.error = value",
           ("tests/test_model.py", "tests/test_worker.py")),
    Mutant("retries-off-by-one", "a task gets one retry more than asked", STEP,
           "if delay >= 0 and rec.attempt < max_attempts then", "if delay >= 0 and rec.attempt <= max_attempts then",
           ("tests/test_model.py", "tests/test_worker.py")),
    Mutant("lease-1000x-long", "leases last a thousand times too long", STEP,
           "zset_add(K_ACTIVE, now + lease_ms, id)", "zset_add(K_ACTIVE, now + lease_ms * 1000, id)",
           ("tests/test_model.py", "tests/test_recovery.py")),
    Mutant("renewal-shortens-lease", "a renewal ends the lease instead of extending it", "taskmesh/store/lua/renew.lua",
           "local deadline = now + tonumber(ARGV[2])", "local deadline = now",
           ("tests/test_leases.py", "tests/test_worker.py", "tests/test_recovery.py")),
    # Delays and retries.
    Mutant("retries-one-short", "a task gets one retry fewer than asked", OUTCOME,
           "delay_ms, task.retries + 1)", "delay_ms, task.retries)",
           ("tests/test_worker.py", "tests/test_inline_runner.py")),
    Mutant("resume-ignored", "a resumed queue stays paused", "taskmesh/store/lua/control.lua",
           "redis.call('HDEL', K_META, 'paused')", "",
           ("tests/test_flow_control.py",)),
    Mutant("retry-ignores-delay", "a retry with a delay runs at once", STEP,
           "          if delay == 0 then\n", "          if delay >= 0 then\n",
           ("tests/test_model.py",)),
    Mutant("promoted-early", "delayed jobs start a second early", STEP,
           "redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT'",
           "redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now + 1000, 'LIMIT'",
           ("tests/test_model.py",)),
    Mutant("delay-1000x-short", "an enqueue delay is a thousand times too short", ENQUEUE,
           "\n  if delay > 0 then due = now + delay elseif",
           "\n  if delay > 0 then due = now + math.floor(delay / 1000) elseif",
           ("tests/test_model.py", "tests/test_engine.py")),
    Mutant("backoff-one-step-ahead", "the retry backoff skips its first step", "taskmesh/task.py",
           "self.factor ** max(0, attempt - 1)", "self.factor ** max(0, attempt)",
           ("tests/test_task.py", "tests/test_worker.py")),
    # Order.
    Mutant("priority-flipped-enqueue", "one-job enqueue runs low priorities first", LIB,
           "err = refused(seq) or refused(redis.pcall('ZADD', K_WAITING, seq - prio * PRIO_SPAN, id))",
           "err = refused(seq) or refused(redis.pcall('ZADD', K_WAITING, seq + prio * PRIO_SPAN, id))",
           ("tests/test_priority.py",)),
    Mutant("priority-flipped-requeue", "a requeued job ignores its priority", LIB,
           "zset_add(K_WAITING, seq - rec.prio * PRIO_SPAN, id)", "zset_add(K_WAITING, seq, id)",
           ("tests/test_priority.py",)),
    Mutant("priority-flipped-batch", "enqueue_many runs low priorities first", ENQUEUE,
           "zset_add(K_WAITING, seq - rec.prio * PRIO_SPAN, id)", "zset_add(K_WAITING, seq + rec.prio * PRIO_SPAN, id)",
           ("tests/test_engine.py", "tests/test_priority.py")),
    Mutant("priority-flipped-hand-back", "a handed-back job jumps ahead of higher priorities", STEP,
           "emit('released', id)",
           "zset_add(K_WAITING, redis.call('INCR', K_SEQ) + rec.prio * PRIO_SPAN, id) emit('released', id)",
           ("tests/test_priority.py",)),
    Mutant("priority-flipped-stall", "a job recovered from a stall ignores its priority", SWEEP,
           "emit('stalled', id, 'stalls', rec.stalls)",
           "zset_add(K_WAITING, redis.call('INCR', K_SEQ) + rec.prio * PRIO_SPAN, id) "
           "emit('stalled', id, 'stalls', rec.stalls)",
           ("tests/test_priority.py",)),
    # Dedupe.
    Mutant("dedupe-off", "a reused job id enqueues the job again", LIB,
           "if redis.call('HSETNX', K_JOBS, id, cjson.encode(rec)) == 0 then",
           "if redis.call('HSETNX', K_JOBS, id, cjson.encode(rec)) == 2 then",
           ("tests/test_engine.py", "tests/test_client.py")),
    # Limits and pause.
    Mutant("pause-ignored", "a paused queue still leases", STEP,
           "if paused then want = 0 end", "",
           ("tests/test_flow_control.py",)),
    Mutant("queue-max-off-by-one", "a queue runs one job more than its limit", STEP,
           "want = math.min(want, queue_limit.max - redis.call('ZCARD', K_ACTIVE))",
           "want = math.min(want, queue_limit.max + 1 - redis.call('ZCARD', K_ACTIVE))",
           ("tests/test_limits.py", "tests/test_flow_control.py")),
    Mutant("task-max-off-by-one", "a task runs one job more than its limit", STEP,
           "r.cap = limit.max - (tonumber", "r.cap = limit.max + 1 - (tonumber",
           ("tests/test_limits.py", "tests/test_flow_control.py")),
    Mutant("rate-off-by-one", "a rate limit lets one start more through", STEP,
           "if used < limit.rate then return limit.rate - used, 0 end",
           "if used <= limit.rate then return limit.rate + 1 - used, 0 end",
           ("tests/test_limits.py", "tests/test_flow_control.py")),
    Mutant("rate-boundary", "a start exactly one window old still counts", STEP,
           "'(' .. (now - limit.per)", "(now - limit.per)",
           ("tests/test_limits.py",)),
    # Cancellation.
    Mutant("cancel-request-ignored", "a run whose job was cancelled ends as it reported", STEP,
           "elseif rec.cancel or kind == 'x' then", "elseif kind == 'x' then",
           ("tests/test_model.py", "tests/test_worker.py")),
    Mutant("cancel-waiting-ignored", "cancelling a waiting job leaves it waiting", "taskmesh/store/lua/cancel.lua",
           "if state == 'waiting' or state == 'delayed' then", "if state == 'delayed' then",
           ("tests/test_client.py", "tests/test_model.py")),
    # Events.
    Mutant("completed-event-dropped", "the completed event is not sent", STEP,
           "emit('completed', id)", "",
           ("tests/test_events.py",)),
    # Retention.
    Mutant("retention-trims-newest", "retention by count drops the newest jobs", LIB,
           "redis.call('ZPOPMIN', zkey,", "redis.call('ZPOPMAX', zkey,",
           ("tests/test_limits.py", "tests/test_retention.py")),
    Mutant("retention-age-scaled", "retention by age never ages a job out", LIB,
           "'-inf', now - age_ms, 'LIMIT'", "'-inf', now - age_ms * 1000, 'LIMIT'",
           ("tests/test_retention.py",)),
    Mutant("failed-trimmed-as-completed", "failed jobs follow the completed jobs' retention", STEP,
           "trim(K_FAILED, 'failed', failed_keep, failed_age, failed)",
           "trim(K_FAILED, 'failed', completed_keep, completed_age, failed)",
           ("tests/test_retention.py",)),
    Mutant("cancel-retention-off", "jobs cancelled while waiting are never trimmed", "taskmesh/store/lua/cancel.lua",
           "trim(K_CANCELLED, 'cancelled', tonumber(ARGV[3]), tonumber(ARGV[4]), 1)",
           "trim(K_CANCELLED, 'cancelled', -1, -1, 1)",
           ("tests/test_retention.py",)),
    Mutant("lost-retention-off", "jobs failed by the sweep are never trimmed", SWEEP,
           "trim(K_FAILED, 'failed', tonumber(ARGV[4]), tonumber(ARGV[5]), #lost)",
           "trim(K_FAILED, 'failed', -1, -1, #lost)",
           ("tests/test_retention.py",)),
    # Payloads.
    Mutant("payload-limit-off-by-one", "a payload of exactly the limit is refused", "taskmesh/job.py",
           "if len(payload) > limit:", "if len(payload) >= limit:",
           ("tests/test_hostile_payloads.py",)),
    Mutant("payload-limit-one-over", "a payload one byte over the limit is accepted", "taskmesh/job.py",
           "if len(payload) > limit:", "if len(payload) > limit + 1:",
           ("tests/test_hostile_payloads.py",)),
    # Cron.
    Mutant("cron-fires-early", "a tick fires up to a second before it is due", CRON,
           "if tick > state.last and tick <= now then", "if tick > state.last and tick <= now + 1000 then",
           ("tests/test_schedule.py",)),
    Mutant("cron-fires-twice", "a tick fires twice", CRON,
           "if tick > state.last and tick <= now then", "if tick >= state.last and tick <= now then",
           ("tests/test_schedule.py", "tests/faults/test_cron.py")),
    Mutant("cron-passes-early", "a tick is passed over up to a second before it is due", CRON,
           "if pass > state.last and pass <= now then", "if pass > state.last and pass <= now + 1000 then",
           ("tests/test_schedule.py",)),
    Mutant("cron-last-not-advanced", "a fired tick is not remembered", CRON,
           "    state.last = tick", "    state.last = state.last",
           ("tests/test_schedule.py", "tests/faults/test_cron.py")),
    Mutant("cron-change-not-announced", "ticks due before a change fire after it", CRON,
           "state.nv = state.v ~= version and version or nil", "state.nv = nil",
           ("tests/test_schedule.py",)),
    Mutant("cron-unchanged-restarts", "storing an unchanged schedule drops its missed ticks", "taskmesh/schedule.py",
           "if old == entry.to_json():", "if old == entry.to_json() and False:",
           ("tests/test_schedule.py",)),
    Mutant("cron-init-restarts", "a schedule's state is made afresh when it exists", CRON,
           "  if state then return 1 end", "  if false then return 1 end",
           ("tests/test_schedule.py",)),
    Mutant("cron-time-zone-ignored", "cron in a time zone runs in UTC", "taskmesh/schedule.py",
           "base = datetime.fromtimestamp(after_ms / 1000, ZoneInfo(self.tz))",
           "base = datetime.fromtimestamp(after_ms / 1000, ZoneInfo('UTC'))",
           ("tests/test_schedule.py",)),
)


def copy_tree(destination: Path) -> None:
    """The checkout's files as they are now (committed or not), without its venv and caches."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    """Run ``tests`` on ``tree``'s code: exit status (124 on timeout), seconds, the last lines."""
    env = dict(os.environ)
    paths = [str(tree), str(tree / "plugins" / "taskmesh-k8s"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return 124, time.monotonic() - started, "timed out"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return done.returncode, time.monotonic() - started, tail


def apply(tree: Path, mutant: Mutant) -> dict[Path, str]:
    """Apply ``mutant`` to ``tree``; returns the original texts of the files it changed, to restore."""
    originals: dict[Path, str] = {}
    for name, old, new in mutant.edits:
        path = tree / name
        text = path.read_text()
        originals.setdefault(path, text)
        if text.count(old) != 1:
            restore(originals)
            raise LookupError(f"{mutant.name}: the text to change occurs {text.count(old)} times in {name}")
        path.write_text(text.replace(old, new))
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutants to try (default: all)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    options = parser.parse_args()
    known = {mutant.name: mutant for mutant in MUTANTS}
    unknown = [name for name in options.names if name not in known]
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(unknown)}")
    chosen = [known[name] for name in options.names] or list(MUTANTS)
    if options.list:
        for mutant in chosen:
            print(f"{mutant.name:28} {mutant.breaks}  [{' '.join(mutant.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="taskmesh-mutants-") as temp:
        tree = Path(temp)
        copy_tree(tree)
        try:
            for mutant in chosen:  # every mutant applies before anything runs
                restore(apply(tree, mutant))
        except LookupError as exc:
            print(f"{exc}: update the catalogue", file=sys.stderr)
            return 2
        tests = tuple(dict.fromkeys(test for mutant in chosen for test in mutant.tests))
        status, seconds, tail = run_tests(tree, tests)
        if status != 0:
            print(f"the tests fail without any mutant ({seconds:.0f} s):\n{tail}", file=sys.stderr)
            return 2
        print(f"unmutated: {len(tests)} test files pass ({seconds:.0f} s)\n")
        print("| mutant | what it breaks | verdict | seconds |\n|---|---|---|---|", flush=True)
        survivors = 0
        for mutant in chosen:
            originals = apply(tree, mutant)
            try:
                status, seconds, tail = run_tests(tree, mutant.tests)
            finally:
                restore(originals)
            verdict = "survived" if status == 0 else "caught" if status in (1, 124) else f"error ({status})"
            survivors += status == 0
            print(f"| {mutant.name} | {mutant.breaks} | {verdict} | {seconds:.0f} |", flush=True)
            if status not in (0, 1, 124):
                print(tail, file=sys.stderr)
        print(f"\n{len(chosen) - survivors} of {len(chosen)} caught")
        return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
