"""The engine against a model: random sequences of operations run on the real Lua scripts and a real
Redis and, side by side, on a small Python model of the job state machine. After every step the
observable state must agree: each job's record (state, attempt, stalls, token, holder, cancel flag,
result, error, progress, logs, cap counting), the members of every state set, the waiting order
(priority, then FIFO), the events emitted with their fields, the queue's settings, the running
counts and rate logs of its limits, and the wake-up tokens for idle workers. A stale holder's calls
must be refused and change nothing at all.

Operations: enqueue (priorities, delays, reused ids), leases by two workers (plain, or an idle
worker's step gated by its claim list), reports of current and stale holders (progress, log,
complete, fail with or without a retry, release, defer, cancelled), renewals, cancel, pause, resume,
limits on the queue and on a task (at most N leases an hour, at most M active), lease expiry and
sweeps, delayed jobs coming due.

Time: leases and delays last an hour, so nothing expires or comes due by itself while a sequence
runs. The clock moving past one job's lease deadline or due time is played by rewriting its score to
a small, increasing number: ``ZADD active k id`` expires that lease, ``ZADD delayed k id`` makes that
job due. Jobs the test made due are therefore promoted in the order it made them due, and expired
leases are swept in the order they expired. A job deferred with no delay is due at once; its score
is rewritten the same way after the step, so its place among other due jobs does not depend on
which millisecond the step ran in.

Retention is unlimited here (nothing is trimmed). A failure prints the shrunk sequence of
operations and a ``@reproduce_failure`` blob that replays it. ``TASKMESH_MODEL_EXAMPLES`` sets the
number of sequences (default 200) for a longer search.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskmesh import Call, Client, JobNotFound, Limit, Settings
from taskmesh.store import scripts
from taskmesh.store.keys import claim_key
from taskmesh.store.scripts import Update

HOUR_MS = 3_600_000
TASKS = ("model.a", "model.b")
WORKERS = ("A", "B")
ZSETS = ("delayed", "active", "completed", "failed", "cancelled")
WAKEUP_CAP = 16  # the most wake-up tokens the list holds (lib.lua)
WORKER_LOST = "WorkerLost"  # the model's stand-in for the error the sweep records
FORGED = 10**9  # added to a token to make one no lease ever carried

MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("TASKMESH_MODEL_EXAMPLES", "200")),
    stateful_step_count=50,
    deadline=None,
    derandomize=False,
    print_blob=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Job:
    """The model of one job record."""

    task: str
    prio: int
    arg: int
    state: str
    attempt: int = 0
    stalls: int = 0
    order: int = 0  # place in the FIFO of its priority while waiting
    clock: int = 0  # > 0: the test moved time past its lease deadline (active) or due time (delayed)
    token: int | None = None
    worker: str | None = None
    cancel: bool = False
    counted: bool = False  # counted in its task's running jobs (leased under, or running when set, a task's cap)
    capped: bool = False  # leased under a cap: its exit may let another job start
    result: str | None = None
    error: str | None = None
    progress: str | None = None
    logs: list[str] = field(default_factory=list)


Pair = tuple[str, int]  # (job id, token): what a holder sends


@dataclass(frozen=True)
class Cap:
    """A queue's or a task's limit: at most ``rate`` leases per hour, at most ``max`` active."""

    rate: int | None
    max: int | None

    def to_json(self) -> dict[str, int]:
        out = {} if self.rate is None else {"rate": self.rate, "per": HOUR_MS}
        return out if self.max is None else {**out, "max": self.max}


# A job to enqueue: a new id (None) or an existing one (an index), priority, delayed an hour or not, task.
enqueue_specs = st.tuples(st.none() | st.integers(0, 255), st.integers(-2, 2), st.booleans(), st.sampled_from(TASKS))

# An update's source ("held": a current lease, "stale": an old or forged token), which one (an
# index), kind, fail delay (-1 never retry, 0 at once, an hour), max attempts.
update_specs = st.tuples(
    st.sampled_from(["held", "held", "held", "stale"]),
    st.integers(0, 255),
    st.sampled_from("plcfrdx"),
    st.sampled_from([-1, 0, HOUR_MS]),
    st.integers(1, 3),
)


class EngineMachine(RuleBasedStateMachine):
    """The engine on a fresh key prefix of the Redis at `url`, and its model; one queue, 'default'."""

    url: str

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{uuid.uuid4().hex[:12]}"
        base = Settings(
            lease_seconds=3600,
            completed_keep=-1,
            completed_age=-1,
            failed_keep=-1,
            failed_age=-1,
        )
        self.client = Client(self.url, prefix=self.prefix, settings=base)
        self.settings = self.client.settings
        self.keys = self.client.keys("default")
        self.tag = f"{{{self.prefix}:default}}"
        self.jobs: dict[str, Job] = {}
        self.tokens: list[Pair] = []  # every lease handed out, oldest first
        self.paused = False
        self.limits: dict[str, Cap] = {}  # '' for the queue, else a task name
        self.running: dict[str, int] = {}  # the engine's count of running jobs per capped task
        self.rate_log: dict[str, int] = {}  # leases counted by each rate limit ('' for the queue)
        self.wakeups = 0  # length of the wake-up list idle workers block on
        self.capped_exits = 0  # in the current script call
        self.fifo = 0  # the model's sequence: waiting order
        self.clock = 0  # the scores the test gives to expired leases and due jobs
        self.events: list[dict[str, str]] = []  # the events emitted since the last check
        self.last_event = "0-0"
        self.values = 0  # numbers for results, errors, progress and log lines

    def teardown(self) -> None:
        conn = self.client.redis
        keys = list(conn.scan_iter(match=f"{{{self.prefix}*", count=1000))
        if keys:
            conn.delete(*keys)
        self.client.close()

    # -- the model ---------------------------------------------------------------

    def of_state(self, state: str) -> list[str]:
        return [job_id for job_id, job in self.jobs.items() if job.state == state]

    def waiting_order(self) -> list[str]:
        return sorted(self.of_state("waiting"), key=lambda i: (-self.jobs[i].prio, self.jobs[i].order))

    def held(self) -> list[Pair]:
        return [(i, cast(int, j.token)) for i, j in self.jobs.items() if j.state == "active"]

    def is_held(self, pair: Pair) -> bool:
        job = self.jobs.get(pair[0])
        return job is not None and job.state == "active" and job.token == pair[1]

    def stale(self) -> list[Pair]:
        """Tokens that are not their job's lease: old ones first, then forged ones."""
        old = [pair for pair in self.tokens if not self.is_held(pair)]
        return old + [(i, t + FORGED) for i, t in self.held()]

    def pick_pair(self, source: str, index: int) -> Pair:
        """A current lease or a stale token (a stale one when nothing is held); needs a token handed out."""
        pool = (self.held() if source == "held" else []) or self.stale()
        return pool[index % len(pool)]

    def due_delayed(self) -> list[str]:
        due = [i for i in self.of_state("delayed") if self.jobs[i].clock]
        return sorted(due, key=lambda i: self.jobs[i].clock)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def value(self) -> int:
        self.values += 1
        return self.values

    def emit(self, event: str, job_id: str, **fields: object) -> None:
        self.events.append({"event": event, "job": job_id, **{k: str(v) for k, v in fields.items()}})

    def wake(self, n: int) -> None:
        """Wake-up tokens for idle workers: up to n, never more than WAKEUP_CAP in the list."""
        self.wakeups += max(0, min(n, WAKEUP_CAP - self.wakeups))

    def wake_capped_exits(self) -> None:
        """Jobs that left 'active' after a lease under a cap may each let a waiting job start."""
        if self.capped_exits and self.of_state("waiting"):
            self.wake(self.capped_exits)
        self.capped_exits = 0

    def push_waiting(self, job: Job) -> None:
        self.fifo += 1
        job.state, job.order, job.clock = "waiting", self.fifo, 0

    def leave_active(self, job: Job) -> None:
        if job.counted:
            self.running[job.task] -= 1
        if job.capped:
            self.capped_exits += 1
        job.token, job.clock, job.counted, job.capped = None, 0, False, False

    def finish(self, job_id: str, job: Job, state: str, **fields: object) -> None:
        self.leave_active(job)
        job.state = state
        self.emit(state, job_id, **fields)

    def apply(self, update: Update) -> tuple[bool, str]:
        """Apply one update to the model: (accepted, where the job went if back to waiting or delayed:
        'waiting', 'delayed', 'due' (delayed, due at once) or '')."""
        job_id, kind = update.id, update.kind
        job = self.jobs.get(job_id)
        if job is None or job.state != "active" or job.token != update.token:
            return False, ""
        if kind == "p":
            job.progress = update.value
            self.emit("progress", job_id, progress=update.value)
        elif kind == "l":
            job.logs = [*job.logs, update.value][-100:]
            self.emit("log", job_id, message=update.value)
        elif job.cancel or kind == "x":
            if kind == "c":
                job.result = update.value
            elif kind in "fd":
                job.error = update.value
            self.finish(job_id, job, "cancelled")
        elif kind == "c":
            job.result = update.value
            self.finish(job_id, job, "completed")
        elif kind == "f":
            job.error = update.value
            if update.delay_ms >= 0 and job.attempt < update.max_attempts:
                self.leave_active(job)
                if update.delay_ms == 0:
                    self.push_waiting(job)
                else:
                    job.state = "delayed"
                self.emit("retrying", job_id, attempt=job.attempt, delay=update.delay_ms)
                return True, job.state
            self.finish(job_id, job, "failed", attempt=job.attempt)
        elif kind == "r":
            self.leave_active(job)
            job.attempt -= 1
            self.push_waiting(job)
            self.emit("released", job_id)
            return True, "waiting"
        elif kind == "d":
            self.leave_active(job)
            job.attempt -= 1
            job.error = update.value
            job.state = "delayed"
            self.emit("deferred", job_id, delay=update.delay_ms)
            return True, "due" if update.delay_ms == 0 else "delayed"
        return True, ""

    def to_lease(self, want: int) -> tuple[list[str], bool]:
        """The jobs a step leases, in order, and whether a rate limit held one back (the step then says
        when its window frees): the first waiting ones, within the queue's limits, skipping jobs whose
        task's limits block them."""
        if self.paused or want <= 0:
            return [], False
        queue = self.limits.get("")
        if queue and queue.max is not None:
            want = min(want, queue.max - len(self.of_state("active")))
        queue_free = None
        if queue and queue.rate is not None and want > 0:
            queue_free = max(0, queue.rate - self.rate_log.get("", 0))
            held = queue_free < want
            want = min(want, queue_free)
        if want <= 0:
            return [], queue_free is not None and held
        picked: list[str] = []
        blocked = False
        room: dict[str, list[int]] = {}  # task -> [free slots under its max, free starts in its window]
        for job_id in self.waiting_order():
            task = self.jobs[job_id].task
            limit = self.limits.get(task)
            if limit is None:
                picked.append(job_id)
            else:
                if task not in room:  # the first job of this task: how many its limits let start
                    cap = 10**9 if limit.max is None else limit.max - self.running.get(task, 0)
                    rate = 10**9 if limit.rate is None else limit.rate - self.rate_log.get(task, 0)
                    room[task] = [cap, rate]
                r = room[task]
                if r[0] > 0 and r[1] > 0:
                    picked.append(job_id)
                    r[0], r[1] = r[0] - 1, r[1] - 1
                elif r[0] > 0:
                    blocked = True  # held back by the task's rate limit alone
            if len(picked) == want:
                break
        # The queue's window holds jobs back when it allowed fewer than asked and this step filled it.
        if queue_free is not None and held and len(picked) == queue_free:
            blocked = True
        return picked, blocked

    def count_lease(self, job: Job) -> None:
        """A lease counts against the limits in force."""
        limit, queue = self.limits.get(job.task), self.limits.get("")
        if limit and limit.max is not None:
            self.running[job.task] = self.running.get(job.task, 0) + 1
            job.counted = job.capped = True
        if limit and limit.rate is not None:
            self.rate_log[job.task] = self.rate_log.get(job.task, 0) + 1
        if queue and queue.max is not None:
            job.capped = True
        if queue and queue.rate is not None:
            self.rate_log[""] = self.rate_log.get("", 0) + 1

    # -- calling the engine ------------------------------------------------------------

    def call(self, name: str, args: list[Any]) -> Any:
        return scripts.call(self.client.redis, name, self.keys.all, args)

    def make_update(self, pair: Pair, kind: str, delay: int, max_attempts: int) -> Update:
        n = self.value()
        if kind == "d":
            return Update("d", pair[0], pair[1], f'{{"type":"SlowDown","n":{n}}}', max(0, delay))
        value = {"p": str(n), "l": f"line {n}", "c": f'"r{n}"', "f": f'{{"type":"E","n":{n}}}'}.get(kind, "")
        return Update(kind, pair[0], pair[1], value, delay, max_attempts)

    def step(self, worker: str, want: int, updates: list[Update], claimed: bool | None = None) -> list[bool]:
        """One step call on both sides; checks the accepted flags, the leases and the next-due hint.
        With `claimed` set, the step is gated by the worker's claim list and leases only if it holds
        a wake-up (claimed: one was moved there)."""
        expected, due_now, went = [], [], []
        for update in updates:
            ok, where = self.apply(update)
            expected.append(ok)
            went.append(where)
            if where == "due":
                due_now.append(update.id)
        for job_id in self.due_delayed():
            self.push_waiting(self.jobs[job_id])
            self.emit("waiting", job_id)
        asked = 0 if self.paused or claimed is False else want
        to_lease, rate_blocked = self.to_lease(asked)

        keys = self.keys.all if claimed is None else (*self.keys.all, claim_key(self.keys, worker))
        args = scripts.step_args(self.settings, worker, want, updates)
        result = scripts.call(self.client.redis, "step", keys, args)
        accepted, leased, next_due = scripts.parse_step(result)
        assert scripts.step_held(result) == rate_blocked, "a rate limit held a waiting job back"

        assert accepted == expected, f"accepted flags {accepted} != model {expected} for {updates}"
        assert [job.id for job in leased] == to_lease, "leased jobs, in order"
        newest = max((t for _, t in self.tokens), default=0)
        for got in leased:
            job = self.jobs[got.id]
            assert got.token > newest, "a lease's token is newer than every token handed out before"
            newest = got.token
            job.state, job.attempt, job.token, job.worker, job.clock = "active", job.attempt + 1, got.token, worker, 0
            self.count_lease(job)
            assert (got.attempt, got.task) == (job.attempt, job.task)
            assert json.loads(got.payload) == {"t": job.task, "a": [job.arg], "k": {}}
            self.tokens.append((got.id, got.token))
            self.emit("active", got.id, attempt=job.attempt)
        # Wake-ups: more runnable than this worker took passes one on; a worker that leases nothing
        # leaves what it handed back to others; a backed-off job may be due before idle workers look.
        if asked > 0 and len(leased) == asked and self.of_state("waiting"):
            self.wake(1)
        others = went.count("waiting") if want == 0 else 0
        self.wake(others + (1 if {"delayed", "due"} & set(went) else 0))
        self.wake_capped_exits()
        # The step's hint: None without delayed jobs or a rate limit holding jobs back, 0 when a
        # delayed job is due now, else later.
        if not self.of_state("delayed") and not rate_blocked:
            assert next_due is None
        else:
            assert next_due is not None and (next_due == 0) == bool(due_now)
        for job_id in due_now:
            self.make_due(job_id)
        return accepted

    def make_due(self, job_id: str) -> None:
        """The clock passes this delayed job's due time."""
        self.jobs[job_id].clock = self.tick()
        self.client.redis.zadd(self.keys.delayed, {job_id: self.jobs[job_id].clock})

    def snapshot(self) -> dict[str, Any]:
        """Every key of this prefix and its value."""
        conn = self.client.redis
        out: dict[str, Any] = {}
        for key in conn.scan_iter(match=f"{{{self.prefix}*", count=1000):
            kind = conn.type(key)
            if kind == "hash":
                out[key] = conn.hgetall(key)
            elif kind == "zset":
                out[key] = conn.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                out[key] = conn.lrange(key, 0, -1)
            elif kind == "set":
                out[key] = conn.smembers(key)
            elif kind == "stream":
                out[key] = conn.xinfo_stream(key)["last-generated-id"]
            else:
                out[key] = conn.get(key)
        return out

    # -- rules ---------------------------------------------------------------------

    @initialize(max_stalls=st.integers(0, 2), specs=st.lists(enqueue_specs, max_size=6))
    def configure(self, max_stalls: int, specs: list[tuple[int | None, int, bool, str]]) -> None:
        """The limit on lost leases, and the jobs queued to begin with."""
        self.settings = self.settings.replace(max_stalls=max_stalls)
        if specs:
            self.enqueue(specs)

    @rule(specs=st.lists(enqueue_specs, min_size=1, max_size=3))
    def enqueue(self, specs: list[tuple[int | None, int, bool, str]]) -> None:
        """Enqueue 1-3 jobs in one call; a reused id (an existing job's, or one earlier in the batch) adds nothing."""
        calls, expected, ids = [], [], list(self.jobs)
        for reuse, prio, delayed, task in specs:
            if reuse is None or not ids:
                job_id = f"j{len(ids)}"
                ids.append(job_id)
            else:
                job_id = ids[reuse % len(ids)]
            arg = int(job_id[1:])
            calls.append(Call(task, [arg], job_id=job_id, delay=3600 if delayed else None, priority=prio))
            if job_id in self.jobs:
                expected.append(False)
                continue
            expected.append(True)
            job = self.jobs[job_id] = Job(task, prio, arg, "delayed")
            if delayed:
                self.emit("delayed", job_id, due="<time>")
            else:
                self.push_waiting(job)
                self.emit("enqueued", job_id)
        self.wake(expected.count(True))
        handles = self.client.enqueue_many(calls)
        assert [h.created for h in handles] == expected

    @rule(worker=st.sampled_from(WORKERS), want=st.integers(0, 3))
    def lease(self, worker: str, want: int) -> None:
        """A worker with free slots leases (want 0: it only promotes due jobs)."""
        self.step(worker, want, [])

    @rule(
        worker=st.sampled_from(WORKERS),
        claim=st.booleans(),
        want=st.integers(1, 3),
        taken=st.sampled_from([0, 0, 1, 2, WAKEUP_CAP]),
    )
    def idle_worker_wakes(self, worker: str, claim: bool, want: int, taken: int) -> None:
        """An idle worker takes a wake-up token (if one is left after other idle workers took `taken`;
        their steps are other rules) and leases: with the one-job step gated by its claim list (the
        token is moved there first), or with a plain step after taking the token."""
        conn = self.client.redis
        if taken:
            conn.lpop(self.keys.wakeup, taken)
            self.wakeups = max(0, self.wakeups - taken)
        claimed = self.wakeups > 0
        self.wakeups -= int(claimed)
        if claim:
            conn.lmove(self.keys.wakeup, claim_key(self.keys, worker), "LEFT", "RIGHT")
            self.step(worker, 1, [], claimed=claimed)
        else:
            conn.lpop(self.keys.wakeup)
            self.step(worker, want, [])

    @precondition(lambda self: self.held())
    @rule(
        worker=st.sampled_from(WORKERS),
        want=st.integers(0, 2),
        specs=st.lists(update_specs, min_size=1, max_size=3),
    )
    def report(self, worker: str, want: int, specs: list[tuple[str, int, str, int, int]]) -> None:
        """Holders report (mostly with their current token): progress, logs, outcomes; then lease."""
        updates = []
        for source, index, kind, delay, max_attempts in specs:
            updates.append(self.make_update(self.pick_pair(source, index), kind, delay, max_attempts))
        self.step(worker, want, updates)

    @precondition(lambda self: self.tokens and not self.due_delayed())
    @rule(
        specs=st.lists(
            st.tuples(st.integers(0, 255), st.sampled_from("plcfrdx"), st.sampled_from([-1, 0, HOUR_MS])),
            min_size=1,
            max_size=3,
        ),
        renew=st.booleans(),
    )
    def stale_holder(self, specs: list[tuple[int, str, int]], renew: bool) -> None:
        """Old or forged tokens: every call is refused and no key changes (the step promotes nothing:
        no delayed job is due)."""
        before = self.snapshot()
        if renew:
            pairs = [self.pick_pair("stale", index) for index, _, _ in specs]
            lost, cancel = scripts.parse_renew(self.call("renew", scripts.renew_args(self.settings, pairs)))
            assert (lost, cancel) == ([i for i, _ in pairs], [])
        else:
            updates = [self.make_update(self.pick_pair("stale", index), kind, delay, 3) for index, kind, delay in specs]
            assert self.step("A", 0, updates) == [False] * len(updates)
        assert self.snapshot() == before, "a refused call changed nothing"

    @precondition(lambda self: self.held())
    @rule(specs=st.lists(st.tuples(st.sampled_from(["held", "held", "stale"]), st.integers(0, 255)), max_size=4))
    def renew(self, specs: list[tuple[str, int]]) -> None:
        """A holder renews leases (some may be stale): renewed ones are no longer expired."""
        pairs = [self.pick_pair(source, index) for source, index in specs]
        lost, cancel = [], []
        for pair in pairs:
            if self.is_held(pair):
                job = self.jobs[pair[0]]
                job.clock = 0
                if job.cancel:
                    cancel.append(pair[0])
            else:
                lost.append(pair[0])
        result = scripts.parse_renew(self.call("renew", scripts.renew_args(self.settings, pairs)))
        assert result == (lost, cancel)

    @rule(index=st.integers(0, 255), which=st.sampled_from(["a job", "a job", "a job", "no such job"]))
    def cancel(self, index: int, which: str) -> None:
        """Waiting or delayed: cancelled at once; active: flagged for its holder; else nothing changes."""
        if which == "no such job" or not self.jobs:
            try:
                self.client.cancel("no-such-job")
            except JobNotFound:
                return
            raise AssertionError("cancel of a missing job raises JobNotFound")
        job_id = list(self.jobs)[index % len(self.jobs)]
        job = self.jobs[job_id]
        expected = job.state
        if job.state in ("waiting", "delayed"):
            job.state, job.clock, expected = "cancelled", 0, "cancelled"
            self.emit("cancelled", job_id)
        elif job.state == "active":
            if not job.cancel:
                self.emit("cancelling", job_id)
            job.cancel, expected = True, "cancelling"
        assert self.client.cancel(job_id) == expected

    @precondition(lambda self: self.of_state("active"))
    @rule(index=st.integers(0, 255))
    def expire(self, index: int) -> None:
        """The clock passes one active job's lease deadline."""
        active = self.of_state("active")
        job_id = active[index % len(active)]
        self.jobs[job_id].clock = self.tick()
        self.client.redis.zadd(self.keys.active, {job_id: self.jobs[job_id].clock})

    @precondition(lambda self: any(not self.jobs[i].clock for i in self.of_state("delayed")))
    @rule(index=st.integers(0, 255))
    def come_due(self, index: int) -> None:
        """The clock passes one delayed job's due time (the next step promotes it)."""
        later = [i for i in self.of_state("delayed") if not self.jobs[i].clock]
        self.make_due(later[index % len(later)])

    @precondition(lambda self: self.of_state("active"))
    @rule()
    def sweep(self) -> None:
        """Expired leases: back to waiting (attempt unspent, one more stall), failed as lost past
        max_stalls, cancelled if cancellation was requested."""
        expired = sorted((i for i in self.of_state("active") if self.jobs[i].clock), key=lambda i: self.jobs[i].clock)
        recovered, lost = [], []
        for job_id in expired:
            job = self.jobs[job_id]
            job.stalls += 1
            if job.cancel:
                self.finish(job_id, job, "cancelled")
            elif job.stalls > self.settings.max_stalls:
                job.error = WORKER_LOST
                self.finish(job_id, job, "failed", attempt=job.attempt, reason="worker lost")
                lost.append(job_id)
            else:
                self.leave_active(job)
                job.attempt -= 1
                self.push_waiting(job)
                self.emit("stalled", job_id, stalls=job.stalls)
                recovered.append(job_id)
        self.wake_capped_exits()
        self.wake(len(recovered))
        result = self.call("sweep", scripts.sweep_args(self.settings))
        assert (list(result[0]), list(result[1])) == (recovered, lost)

    @rule(
        op=st.sampled_from(["resume", "resume", "pause", "limit"]),
        scope=st.sampled_from(["", *TASKS]),
        rate=st.none() | st.integers(1, 5),
        max_active=st.none() | st.integers(1, 3),
    )
    def control(self, op: str, scope: str, rate: int | None, max_active: int | None) -> None:
        """Pause (no leases; enqueue, reports and sweeps go on), resume (either may repeat), or limit
        the queue (scope '') or a task: at most `rate` leases an hour and `max_active` at once (neither:
        no limit). A task's cap counts its jobs already running."""
        if op in ("pause", "resume"):
            self.paused = op == "pause"
            self.emit(f"{op}d", "")
            if op == "resume":
                self.wake(WAKEUP_CAP)
            getattr(self.client, op)()
            return
        limit = None if rate is None and max_active is None else Cap(rate, max_active)
        real = None if limit is None else Limit(rate=rate, per=HOUR_MS / 1000, max_active=max_active)
        raw = "" if real is None else real.to_json()
        # A cap counts the jobs already running under it, checked again whenever it is set (a task's: its
        # running count; the queue's: their ends wake workers).
        if max_active is not None:
            running = [job for job in self.jobs.values() if job.state == "active" and scope in ("", job.task)]
            for job in running:
                job.capped = True
                if scope:
                    job.counted = True
            if scope:
                self.running[scope] = len(running)
        before = self.limits.get(scope)
        before_raw = None if before is None else Limit(before.rate, HOUR_MS / 1000, before.max).to_json()
        self.client.set_limit("default", real, task=scope or None)
        if (before_raw or "") == raw:
            return  # unchanged: nothing written, no event, nobody woken
        if limit is None:
            self.limits.pop(scope, None)
        else:
            self.limits[scope] = limit
        self.emit("limited", "", task=scope, limit=raw)
        if before is not None:  # only a limit changed or removed can let a waiting job start
            self.wake(WAKEUP_CAP)

    # -- the comparison ---------------------------------------------------------------

    @invariant()
    def engine_matches_model(self) -> None:
        conn, keys = self.client.redis, self.keys
        with conn.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.jobs)
            pipe.hkeys(keys.payloads)
            pipe.zrange(keys.waiting, 0, -1)
            for name in ZSETS:
                pipe.zrange(getattr(keys, name), 0, -1)
            pipe.hgetall(keys.meta)
            pipe.llen(keys.wakeup)
            for worker in WORKERS:
                pipe.llen(claim_key(keys, worker))
            pipe.hgetall(f"{self.tag}:running")
            for name in ("", *TASKS):
                pipe.zcard(f"{self.tag}:rate" + (f":{name}" if name else ""))
            pipe.xrange(keys.events, f"({self.last_event}", "+")
            results = pipe.execute()
        records, payloads, waiting = results[:3]
        zsets = results[3 : 3 + len(ZSETS)]
        meta, wakeups, *rest = results[3 + len(ZSETS) :]
        claims, (running, *logs, entries) = rest[: len(WORKERS)], rest[len(WORKERS) :]

        assert sorted(records) == sorted(self.jobs), "job records"
        assert sorted(payloads) == sorted(self.jobs), "payloads"
        for job_id, job in self.jobs.items():
            got, want = observed(json.loads(records[job_id])), expected(job)
            differ = {name: (got[name], want[name]) for name in want if got[name] != want[name]}
            assert not differ, f"job {job_id}, (engine, model): {differ}"
        assert waiting == self.waiting_order(), "waiting, in lease order"
        for name, members in zip(ZSETS, zsets, strict=True):
            assert sorted(members) == sorted(self.of_state(name)), name
        limits = {f"limit:{name}": limit.to_json() for name, limit in self.limits.items()}
        assert {k: json.loads(v) for k, v in meta.items() if k != "paused"} == limits, "limits"
        assert ("paused" in meta) == self.paused
        assert wakeups == self.wakeups, "wake-up tokens"
        assert claims == [0] * len(WORKERS), "no claim is left behind"
        assert {task: int(n) for task, n in running.items()} == self.running, "running jobs per capped task"
        for task, limit in self.limits.items():
            if task and limit.max is not None:
                assert self.running[task] == sum(j.task == task for j in self.jobs.values() if j.state == "active")
        assert logs == [self.rate_log.get(name, 0) for name in ("", *TASKS)], "rate limit logs"
        # A delayed job's due time is the server's clock: only its presence is compared.
        emitted = [{**fields, "due": "<time>"} if "due" in fields else fields for _, fields in entries]
        assert emitted == self.events, "events"
        if entries:
            self.last_event = entries[-1][0]
        self.events = []


def expected(job: Job) -> dict[str, Any]:
    return {
        "task": job.task,
        "prio": job.prio,
        "state": job.state,
        "attempt": job.attempt,
        "stalls": job.stalls,
        "token": job.token,
        "worker": job.worker,
        "cancel": job.cancel,
        "counted": job.counted,
        "capped": job.capped,
        "result": job.result,
        "error": job.error,
        "progress": job.progress,
        "logs": job.logs,
        "due": job.state == "delayed",
        "finished": job.state in ("completed", "failed", "cancelled"),
    }


def observed(rec: dict[str, Any]) -> dict[str, Any]:
    error = rec.get("error")
    if error is not None and json.loads(error).get("type") == WORKER_LOST:
        error = WORKER_LOST
    return {
        "task": rec["task"],
        "prio": rec["prio"],
        "state": rec["state"],
        "attempt": rec["attempt"],
        "stalls": rec["stalls"],
        "token": rec.get("token"),
        "worker": rec.get("worker"),
        "cancel": rec.get("cancel", False),
        "counted": rec.get("counted", False),
        "capped": rec.get("capped", False),
        "result": rec.get("result"),
        "error": error,
        "progress": rec.get("progress"),
        "logs": rec.get("logs", []),
        "due": "due" in rec,
        "finished": "finished" in rec,
    }


@pytest.mark.timeout(600)  # a pass takes seconds; shrinking a failure may take minutes
def test_engine_matches_its_model(taskmesh_redis_url: str) -> None:
    class Engine(EngineMachine):
        url = taskmesh_redis_url

    run_state_machine_as_test(Engine, settings=MACHINE_SETTINGS)
