"""The engine against a model: random sequences of operations run on the real Lua scripts and a real
Redis and, side by side, on a small Python model of the job state machine. After every step the
observable state must agree: each job's record (state, attempt, stalls, token, holder, cancel flag,
result, error, progress, logs, cap counting, and its times: created, due, started, finished), the
members of every state set with their scores (due times, lease deadlines, finish times), the waiting
order (priority, then FIFO), the events emitted with their fields, the queue's settings, the running
counts and the starts in the windows of its rate limits, the step's hints (when the next delayed job
is due, when a rate window frees a start), and the wake-up tokens for idle workers. A stale holder's
calls must be refused and change nothing at all.

Operations: enqueue (priorities, delays, reused ids, ids of trimmed jobs), steps of two workers
(reports of current and stale holders: progress, log, complete, fail with or without a retry delay,
release, defer, cancelled; then a lease of up to three jobs; or an idle worker's step gated by its
claim list), renewals, cancel (of a waiting, delayed, active, finished or missing job), pause, resume,
limits on the queue and on a task (at most N starts a second, at most M active; a sequence may start
with a rate limit), the clock moving on, sweeps of expired leases.

Time: the scripts read the clock from Redis (``TIME``, in the prelude of lib.lua). Here they run
with that one call replaced by a read of a clock the test sets (the key ``<jobs key>:clock``,
seconds and microseconds as ``TIME`` gives them; the replacement must find the call exactly once),
so time stands still while a call runs and is compared, and moves only when a rule moves it:
``advance``, by a fixed step or to a millisecond before, at or after one of the next moments
something falls due (a delayed job's due time, a lease deadline, the first millisecond a start is
out of its rate window, a finished job reaching the retention age); a worker's step, to when the
last step's hint said to look again (the next due time, or the end of a full rate window) or a
millisecond before; a sweep, to the next lease deadline or a millisecond before it; a cancel, to the
moment a finished job reaches the retention age (its trim runs then). Times are milliseconds since
the epoch as in production: leases last 5 s, delays (enqueue, retry, defer) 1 ms to 2.5 s, rate
windows 1 s. The model computes every due time, deadline and finish time itself, and when a lease is
expired (deadline <= now), a delayed job due (due <= now), a start out of its window (more than 1000
ms old) or a finished job old enough to trim (finished <= now - age): a bound off by a millisecond
or a second, or a delay scaled, makes model and engine disagree. Redis expires a rate log
(``PEXPIRE``) by its own clock, not the test's, so the calls that set that expiry (step, limit) run
in a transaction that also persists the logs: nothing depends on how fast the machine runs.

Retention: each sequence draws how many completed jobs are kept and for how long, and the same for
failed and cancelled ones (by count, by age, both or neither). After every call that finished jobs the
model trims as the scripts do (oldest first, up to the batch a call removes) and the surviving ids
must match; an id trimmed may be enqueued again as a new job, and cancelling it finds no job.

Deterministic by default: the same sequences run every time (``derandomize``). A failure prints the
shrunk sequence of operations and a ``@reproduce_failure`` blob that replays it.
``TASKMESH_MODEL_EXAMPLES`` sets the number of sequences (default 200); ``TASKMESH_MODEL_RANDOM=1``
draws new sequences on each run instead (and keeps failures in Hypothesis's example database), for a
longer search: ``TASKMESH_MODEL_RANDOM=1 TASKMESH_MODEL_EXAMPLES=5000``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import pytest
import redis
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

START_MS = 1_767_225_600_000  # the clock at the start of a sequence (2026-01-01), plus 0-999 ms drawn
SUB_MS_US = 999  # microseconds past the millisecond the clock gives: the scripts round them down
LEASE_MS = 5_000
PER_MS = 1_000  # the window of every rate limit
TASKS = ("model.a", "model.b")
SCOPES = ("", *TASKS)  # what a limit applies to: '' the queue, else a task
WORKERS = ("A", "B")
ZSETS = ("delayed", "active", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
WAKEUP_CAP = 16  # the most wake-up tokens the list holds (lib.lua)
TRIM_BATCH = 32  # the least a retention limit may remove in one call (lib.lua)
WORKER_LOST = "WorkerLost"  # the model's stand-in for the error the sweep records
FORGED = 10**9  # added to a token to make one no lease ever carried
TIME_CALL = "local clock = redis.call('TIME')"
TEST_CLOCK = "local clock = {string.match(redis.call('GET', KEYS[1] .. ':clock'), '^(%d+) (%d+)$')}"

MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("TASKMESH_MODEL_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    derandomize=os.environ.get("TASKMESH_MODEL_RANDOM", "") in ("", "0"),
    print_blob=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)

engine_source = scripts.source


@cache
def clocked_source(name: str) -> str:
    """Script `name` as the engine runs it, reading the test's clock instead of Redis TIME."""
    text = engine_source(name)
    assert text.count(TIME_CALL) == 1, "the scripts read the clock in one place: the prelude of lib.lua"
    return text.replace(TIME_CALL, TEST_CLOCK)


@cache
def clocked_sha(name: str) -> str:
    return hashlib.sha1(clocked_source(name).encode()).hexdigest()


@dataclass
class Job:
    """The model of one job record."""

    task: str
    prio: int
    arg: int
    state: str
    created: int
    attempt: int = 0
    stalls: int = 0
    order: int = 0  # place in the FIFO of its priority while waiting
    due: int | None = None  # delayed: when it is due
    deadline: int | None = None  # active: when its lease expires
    started: int | None = None  # when it was last leased
    finished: int | None = None
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
    """A queue's or a task's limit: at most ``rate`` starts a second, at most ``max`` active."""

    rate: int | None
    max: int | None

    def to_json(self) -> dict[str, int]:
        out = {} if self.rate is None else {"rate": self.rate, "per": PER_MS}
        return out if self.max is None else {**out, "max": self.max}


# A job to enqueue: a new id (None, mostly) or one used before (an index), priority, delay (seconds, and in ms), task.
enqueue_specs = st.tuples(
    st.one_of(st.none(), st.none(), st.integers(0, 255)),
    st.integers(-2, 2),
    st.sampled_from([(None, 0), (None, 0), (None, 0), (0.001, 1), (1, 1000), (2.5, 2500)]),
    st.sampled_from(TASKS),
)
# Retry and defer delays (ms): -1 never retry (a defer: at once), 0 at once, later.
delays = st.sampled_from([-1, 0, 1, 1000, 2500])

# An update's source ("held": a current lease, "stale": an old or forged token), which one (an
# index), kind (failures twice as often: they take the most paths), delay, max attempts.
update_specs = st.tuples(
    st.sampled_from(["held", "held", "held", "stale"]),
    st.integers(0, 255),
    st.sampled_from("plcffrdx"),
    delays,
    st.integers(1, 3),
)
# Retention of finished jobs: how many to keep (-1 no limit), and for how long (ms, -1 forever).
keeps = st.sampled_from([0, 1, 3, -1])
ages = st.sampled_from([1000, 3000, -1])


class EngineMachine(RuleBasedStateMachine):
    """The engine on a fresh key prefix of the Redis at `url`, and its model; one queue, 'default'."""

    url: str

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{uuid.uuid4().hex[:12]}"
        self.client = Client(self.url, prefix=self.prefix, settings=Settings(lease_seconds=LEASE_MS / 1000))
        self.settings = self.client.settings
        self.keys = self.client.keys("default")
        self.tag = f"{{{self.prefix}:default}}"
        self.log_keys = {scope: f"{self.tag}:rate" + (f":{scope}" if scope else "") for scope in SCOPES}
        self.jobs: dict[str, Job] = {}
        self.ids: list[str] = []  # every id enqueued, trimmed jobs' too
        self.tokens: list[Pair] = []  # every lease handed out, oldest first
        self.paused = False
        self.limits: dict[str, Cap] = {}  # '' for the queue, else a task name
        self.running: dict[str, int] = {}  # the engine's count of running jobs per capped task
        self.starts: dict[str, dict[int, int]] = {scope: {} for scope in SCOPES}  # rate logs: token -> lease time
        self.retention: dict[str, tuple[int, int]] = {}  # finished state -> (keep, age ms)
        self.wakeups = 0  # length of the wake-up list idle workers block on
        self.capped_exits = 0  # in the current script call
        self.fifo = 0  # the model's sequence: waiting order
        self.now = START_MS
        self.events: list[dict[str, str]] = []  # the events emitted since the last check
        self.last_event = "0-0"
        self.values = 0  # numbers for results, errors, progress and log lines
        self.wake_at: int | None = None  # when the last step's hint said to look again

    def teardown(self) -> None:
        conn = self.client.redis
        keys = list(conn.scan_iter(match=f"{{{self.prefix}*", count=1000))
        if keys:
            conn.delete(*keys)
        self.client.close()

    # -- the model ---------------------------------------------------------------

    def set_clock(self, now: int) -> None:
        """The time every script call reads from now on."""
        self.now = now
        self.client.redis.set(f"{self.keys.jobs}:clock", f"{now // 1000} {now % 1000 * 1000 + SUB_MS_US}")

    def of_state(self, state: str) -> list[str]:
        return [job_id for job_id, job in self.jobs.items() if job.state == state]

    def by_time(self, ids: list[str], when: str) -> list[str]:
        """`ids` in the order of a state set scored by `when`: by time, then by id."""
        return sorted(ids, key=lambda i: (getattr(self.jobs[i], when), i))

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
        """Delayed jobs due now (due <= now), in the order they are promoted."""
        return self.by_time([i for i in self.of_state("delayed") if cast(int, self.jobs[i].due) <= self.now], "due")

    def expired(self) -> list[str]:
        """Active jobs whose lease expired (deadline <= now), in the order they are swept."""
        ids = [i for i in self.of_state("active") if cast(int, self.jobs[i].deadline) <= self.now]
        return self.by_time(ids, "deadline")

    def in_window(self, scope: str) -> list[int]:
        """The times of the starts a rate limit on `scope` counts now (the window's ends included)."""
        return sorted(t for t in self.starts[scope].values() if t >= self.now - PER_MS)

    def moments(self, aim: str) -> list[int]:
        """The coming instants at which something of a kind falls due: 'due' a delayed job, 'deadline' a
        lease's expiry, 'window' the first millisecond a start is out of its rate window, 'age' a finished
        job reaching the retention age."""
        if aim == "window":
            times = {t + PER_MS + 1 for log in self.starts.values() for t in log.values()}
        elif aim == "age":
            finished = [(job.finished, self.retention[job.state][1]) for job in self.jobs.values() if job.finished]
            times = {at + age for at, age in finished if age >= 0}
        else:
            times = {t for t in (getattr(job, aim) for job in self.jobs.values()) if t is not None}
        return sorted(t for t in times if t > self.now)

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
        job.state, job.order, job.due = "waiting", self.fifo, None

    def to_delayed(self, job: Job, delay_ms: int) -> None:
        job.state, job.due = "delayed", self.now + delay_ms

    def leave_active(self, job: Job) -> None:
        if job.counted:
            self.running[job.task] -= 1
        if job.capped:
            self.capped_exits += 1
        job.token, job.deadline, job.counted, job.capped = None, None, False, False

    def finish(self, job_id: str, job: Job, state: str, **fields: object) -> None:
        self.leave_active(job)
        job.state, job.due, job.finished = state, None, self.now
        self.emit(state, job_id, **fields)

    def retain(self, state: str, finished: int) -> None:
        """Retention after a call that finished `finished` jobs of `state` (lib.lua's trim): beyond `keep`
        the oldest leave first, then those finished `age` ms ago or earlier; each limit removes at most
        max(TRIM_BATCH, 2 * finished)."""
        if not finished:
            return
        keep, age = self.retention[state]
        most = max(TRIM_BATCH, 2 * finished)
        ids = self.by_time(self.of_state(state), "finished")
        gone = ids[: min(max(0, len(ids) - keep), most)] if keep >= 0 else []
        if age >= 0:
            gone += [i for i in ids[len(gone) :] if cast(int, self.jobs[i].finished) <= self.now - age][:most]
        for job_id in gone:
            del self.jobs[job_id]

    def apply(self, update: Update) -> tuple[bool, str]:
        """Apply one update to the model: (accepted, the job's state after it, '' if unchanged)."""
        job_id, kind = update.id, update.kind
        job = self.jobs.get(job_id)
        if job is None or job.state != "active" or job.token != update.token:
            return False, ""
        if kind == "p":
            job.progress = update.value
            self.emit("progress", job_id, progress=update.value)
            return True, ""
        if kind == "l":
            job.logs = [*job.logs, update.value][-100:]
            self.emit("log", job_id, message=update.value)
            return True, ""
        if job.cancel or kind == "x":
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
                    self.to_delayed(job, update.delay_ms)
                self.emit("retrying", job_id, attempt=job.attempt, delay=update.delay_ms)
            else:
                self.finish(job_id, job, "failed", attempt=job.attempt)
        elif kind == "r":
            self.leave_active(job)
            job.attempt -= 1
            self.push_waiting(job)
            self.emit("released", job_id)
        elif kind == "d":
            self.leave_active(job)
            job.attempt -= 1
            job.error = update.value
            self.to_delayed(job, update.delay_ms)  # not promoted in this step, even when due at once
            self.emit("deferred", job_id, delay=update.delay_ms)
        return True, job.state

    def to_lease(self, want: int) -> tuple[list[str], set[str]]:
        """The jobs a step leases, in order, and the scopes whose rate limit held a job back (the step then
        says when their window frees a start): the first waiting ones, within the queue's limits, skipping
        jobs whose task's limits block them."""
        if self.paused or want <= 0:
            return [], set()
        queue = self.limits.get("")
        if queue and queue.max is not None:
            want = min(want, queue.max - len(self.of_state("active")))
        queue_free = None
        if queue and queue.rate is not None and want > 0:
            queue_free = max(0, queue.rate - len(self.in_window("")))
            held = queue_free < want
            want = min(want, queue_free)
        if want <= 0:
            return [], {""} if queue_free is not None and held else set()
        picked: list[str] = []
        blocked: set[str] = set()
        room: dict[str, list[int]] = {}  # task -> [free slots under its max, free starts in its window]
        for job_id in self.waiting_order():
            task = self.jobs[job_id].task
            limit = self.limits.get(task)
            if limit is None:
                picked.append(job_id)
            else:
                if task not in room:  # the first job of this task: how many its limits let start
                    cap = 10**9 if limit.max is None else limit.max - self.running.get(task, 0)
                    rate = 10**9 if limit.rate is None else limit.rate - len(self.in_window(task))
                    room[task] = [cap, rate]
                r = room[task]
                if r[0] > 0 and r[1] > 0:
                    picked.append(job_id)
                    r[0], r[1] = r[0] - 1, r[1] - 1
                elif r[0] > 0:
                    blocked.add(task)  # held back by the task's rate limit alone
            if len(picked) == want:
                break
        # The queue's window holds jobs back when it allowed fewer than asked and this step filled it.
        if queue_free is not None and held and len(picked) == queue_free:
            blocked.add("")
        return picked, blocked

    def count_lease(self, job: Job) -> None:
        """A lease counts against the limits in force."""
        limit, queue = self.limits.get(job.task), self.limits.get("")
        if limit and limit.max is not None:
            self.running[job.task] = self.running.get(job.task, 0) + 1
            job.counted = job.capped = True
        if limit and limit.rate is not None:
            self.starts[job.task][cast(int, job.token)] = self.now
        if queue and queue.max is not None:
            job.capped = True
        if queue and queue.rate is not None:
            self.starts[""][cast(int, job.token)] = self.now

    def hints(self, blocked: set[str]) -> tuple[int, int]:
        """The step's hints, in ms: until a delayed job is due or a rate limit frees a start for a job it held
        back (-1: neither), and until the latter (-1: no job held back). A start leaves its window at
        its time + PER_MS + 1."""
        frees = min((self.in_window(scope)[0] + PER_MS + 1 - self.now for scope in blocked), default=-1)
        due = [cast(int, self.jobs[i].due) - self.now for i in self.of_state("delayed")]
        return min(due + ([frees] if frees >= 0 else []), default=-1), frees

    # -- calling the engine ------------------------------------------------------------

    def call(self, name: str, args: list[Any]) -> Any:
        return scripts.call(self.client.redis, name, self.keys.all, args)

    def call_persisting_logs(self, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
        """Run script `name` and, in the same transaction, remove the expiry it may set on the rate logs:
        Redis expires them by its own clock, which is not the test's."""
        conn = self.client.redis
        for _ in range(2):
            with conn.pipeline(transaction=True) as pipe:
                pipe.evalsha(scripts.sha(name), len(keys), *keys, *args)
                for key in self.log_keys.values():
                    pipe.persist(key)
                result = pipe.execute(raise_on_error=False)[0]
            if not isinstance(result, redis.exceptions.NoScriptError):
                break
            conn.script_load(scripts.source(name))
        if isinstance(result, Exception):
            raise result
        return result

    def make_update(self, pair: Pair, kind: str, delay: int, max_attempts: int) -> Update:
        n = self.value()
        if kind == "d":
            return Update("d", pair[0], pair[1], f'{{"type":"SlowDown","n":{n}}}', max(0, delay))
        value = {"p": str(n), "l": f"line {n}", "c": f'"r{n}"', "f": f'{{"type":"E","n":{n}}}'}.get(kind, "")
        return Update(kind, pair[0], pair[1], value, delay, max_attempts)

    def step(self, worker: str, want: int, updates: list[Update], claimed: bool | None = None) -> list[bool]:
        """One step call on both sides; checks the accepted flags, the leases and the hints. With `claimed`
        set, the step is gated by the worker's claim list and leases only if it holds a wake-up (claimed:
        one was moved there). Retention follows the jobs it finished."""
        due = self.due_delayed()  # the updates' delayed jobs are not promoted in the same step
        expected, went = [], []
        for update in updates:
            ok, where = self.apply(update)
            expected.append(ok)
            went.append(where)
        for job_id in due:
            self.push_waiting(self.jobs[job_id])
            self.emit("waiting", job_id)
        asked = 0 if self.paused or claimed is False else want
        to_lease, blocked = self.to_lease(asked)

        keys = self.keys.all if claimed is None else (*self.keys.all, claim_key(self.keys, worker))
        result = self.call_persisting_logs("step", keys, scripts.step_args(self.settings, worker, want, updates))
        accepted, leased, _ = scripts.parse_step(result)
        assert accepted == expected, f"accepted flags {accepted} != model {expected} for {updates}"
        assert [job.id for job in leased] == to_lease, "leased jobs, in order"
        newest = max((t for _, t in self.tokens), default=0)
        for got in leased:
            job = self.jobs[got.id]
            assert got.token > newest, "a lease's token is newer than every token handed out before"
            newest = got.token
            job.state, job.attempt, job.token, job.worker = "active", job.attempt + 1, got.token, worker
            job.started, job.deadline = self.now, self.now + LEASE_MS
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
        self.wake(others + (1 if "delayed" in went else 0))
        self.wake_capped_exits()
        for state in FINISHED:
            self.retain(state, went.count(state))
        hints = self.hints(blocked)
        assert (int(result[2]), int(result[3])) == hints, "hints: ms until due, until a start frees"
        self.wake_at = None if hints[0] < 0 else self.now + hints[0]
        return accepted

    def snapshot(self) -> dict[str, Any]:
        """Every key of this prefix and its value (a stream: its last id)."""
        conn = self.client.redis
        keys = list(conn.scan_iter(match=f"{{{self.prefix}*", count=1000))
        with conn.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            kinds = pipe.execute()
        with conn.pipeline(transaction=False) as pipe:
            for key, kind in zip(keys, kinds, strict=True):
                if kind == "hash":
                    pipe.hgetall(key)
                elif kind == "zset":
                    pipe.zrange(key, 0, -1, withscores=True)
                elif kind == "list":
                    pipe.lrange(key, 0, -1)
                elif kind == "set":
                    pipe.smembers(key)
                elif kind == "stream":
                    pipe.xinfo_stream(key)
                else:
                    pipe.get(key)
            values = pipe.execute()
        for i, kind in enumerate(kinds):
            if kind == "stream":
                values[i] = values[i]["last-generated-id"]
        return dict(zip(keys, values, strict=True))

    # -- rules ---------------------------------------------------------------------

    @initialize(
        start=st.integers(0, 999),
        max_stalls=st.integers(0, 2),
        completed=st.tuples(keeps, ages),
        failed=st.tuples(keeps, ages),
        limit=st.none() | st.tuples(st.sampled_from(SCOPES), st.integers(1, 3), st.none()),
        specs=st.lists(enqueue_specs, max_size=6),
    )
    def configure(
        self,
        start: int,
        max_stalls: int,
        completed: tuple[int, int],
        failed: tuple[int, int],
        limit: tuple[str, int, None] | None,
        specs: list[tuple[int | None, int, tuple[float | None, int], str]],
    ) -> None:
        """The clock, the limit on lost leases, retention (completed; failed and cancelled), a rate limit,
        the first jobs."""
        self.settings = self.settings.replace(
            max_stalls=max_stalls,
            completed_keep=completed[0],
            completed_age=completed[1] / 1000,
            failed_keep=failed[0],
            failed_age=failed[1] / 1000,
        )
        self.client.close()  # the client's calls (cancel) follow these settings too
        self.client = Client(self.url, prefix=self.prefix, settings=self.settings)
        self.set_clock(START_MS + start)
        self.retention = {"completed": completed, "failed": failed, "cancelled": failed}
        if limit:
            self.control("limit", *limit)
        if specs:
            self.enqueue(specs)

    @rule(specs=st.lists(enqueue_specs, min_size=1, max_size=3))
    def enqueue(self, specs: list[tuple[int | None, int, tuple[float | None, int], str]]) -> None:
        """Enqueue 1-3 jobs in one call; an id in use (an existing job's, or one earlier in the batch) adds
        nothing, a trimmed job's adds a new job."""
        calls, expected = [], []
        for reuse, prio, (delay, delay_ms), task in specs:
            if reuse is None or not self.ids:
                self.ids.append(f"j{len(self.ids)}")
                job_id = self.ids[-1]
            else:
                job_id = self.ids[reuse % len(self.ids)]
            arg = int(job_id[1:])
            calls.append(Call(task, [arg], job_id=job_id, delay=delay, priority=prio))
            if job_id in self.jobs:
                expected.append(False)
                continue
            expected.append(True)
            job = self.jobs[job_id] = Job(task, prio, arg, "delayed", created=self.now)
            if delay_ms:
                self.to_delayed(job, delay_ms)
                self.emit("delayed", job_id, due=job.due)
            else:
                self.push_waiting(job)
                self.emit("enqueued", job_id)
        self.wake(expected.count(True))
        handles = self.client.enqueue_many(calls)
        assert [h.created for h in handles] == expected

    @rule(
        aim=st.sampled_from(["due", "deadline", "window", "age", "by", "by"]),
        nearest=st.integers(0, 2),
        offset=st.sampled_from([-1, 0, 0, 1]),
        by=st.sampled_from([1, 999, 1000, 1000, 1000, 5000]),
    )
    def advance(self, aim: str, nearest: int, offset: int, by: int) -> None:
        """The clock moves on: to a millisecond before, at or after one of the next moments of a kind (see
        `moments`), or `by` ms (also when no such moment is coming); never back."""
        moments = [] if aim == "by" else self.moments(aim)
        target = moments[min(nearest, len(moments) - 1)] + offset if moments else self.now + by
        self.set_clock(max(self.now, target))

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

    @rule(
        worker=st.sampled_from(WORKERS),
        want=st.integers(0, 3),
        specs=st.lists(update_specs, max_size=3),
        early=st.sampled_from([None, None, 0, 1]),
    )
    def work(self, worker: str, want: int, specs: list[tuple[str, int, str, int, int]], early: int | None) -> None:
        """A worker's step, at once or after sleeping until the last step's hint said to look again (`early`
        ms before): its holders report (mostly with their current token; once a lease was handed out)
        progress, logs, outcomes; then it leases up to `want` jobs (0: it only promotes due jobs)."""
        if early is not None and self.wake_at is not None:
            self.set_clock(max(self.now, self.wake_at - early))
        updates = []
        for source, index, kind, delay, max_attempts in specs if self.tokens else []:
            updates.append(self.make_update(self.pick_pair(source, index), kind, delay, max_attempts))
        self.step(worker, want, updates)

    @precondition(lambda self: self.tokens and not self.due_delayed())
    @rule(
        specs=st.lists(st.tuples(st.integers(0, 255), st.sampled_from("plcfrdx"), delays), min_size=1, max_size=3),
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
        """A holder renews leases (some may be stale): a renewed lease expires LEASE_MS from now."""
        pairs = [self.pick_pair(source, index) for source, index in specs]
        lost, cancel = [], []
        for pair in pairs:
            if self.is_held(pair):
                job = self.jobs[pair[0]]
                job.deadline = self.now + LEASE_MS
                if job.cancel:
                    cancel.append(pair[0])
            else:
                lost.append(pair[0])
        result = scripts.parse_renew(self.call("renew", scripts.renew_args(self.settings, pairs)))
        assert result == (lost, cancel)

    @rule(
        which=st.sampled_from(["waiting", "delayed", "active", "finished", "gone"]),
        index=st.integers(0, 255),
        at_age=st.sampled_from([False, False, True]),
    )
    def cancel(self, which: str, index: int, at_age: bool) -> None:
        """Cancel a job in the state `which` (if there is one; 'gone': trimmed, or never enqueued), now or
        (`at_age`) when the clock reaches the next moment a finished job reaches the retention age.
        Waiting or delayed: cancelled at once (then retention); active: flagged for its holder; finished:
        nothing changes; gone: no such job."""
        ages = self.moments("age")
        if at_age and ages:
            self.set_clock(ages[0])
        if which == "gone":
            ids = [i for i in self.ids if i not in self.jobs] + ["no-such-job"]
        else:
            states = FINISHED if which == "finished" else (which,)
            ids = [i for i, job in self.jobs.items() if job.state in states] or list(self.jobs) or ["no-such-job"]
        job_id = ids[index % len(ids)]
        job = self.jobs.get(job_id)
        if job is None:
            with pytest.raises(JobNotFound):
                self.client.cancel(job_id)
            return
        before = expected = job.state
        if job.state in ("waiting", "delayed"):
            job.state, job.due, job.finished, expected = "cancelled", None, self.now, "cancelled"
            self.emit("cancelled", job_id)
        elif job.state == "active":
            if not job.cancel:
                self.emit("cancelling", job_id)
            job.cancel, expected = True, "cancelling"
        assert self.client.cancel(job_id) == expected
        if before in ("waiting", "delayed"):
            self.retain("cancelled", 1)

    @precondition(lambda self: self.of_state("active"))
    @rule(early=st.sampled_from([None, None, 0, 0, 1]))
    def sweep(self, early: int | None) -> None:
        """A sweep, now or when the clock reaches the next lease deadline (`early` ms before it). Expired
        leases: back to waiting (attempt unspent, one more stall), failed as lost past max_stalls,
        cancelled if cancellation was requested; then retention."""
        deadlines = self.moments("deadline")
        if early is not None and deadlines:
            self.set_clock(deadlines[0] - early)
        recovered, lost, cancelled = [], [], 0
        for job_id in self.expired():
            job = self.jobs[job_id]
            job.stalls += 1
            if job.cancel:
                self.finish(job_id, job, "cancelled")
                cancelled += 1
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
        assert (list(result[0]), list(result[1])) == (recovered, lost), f"swept at {self.now}: (recovered, lost)"
        self.retain("failed", len(lost))
        self.retain("cancelled", cancelled)

    @rule(
        op=st.sampled_from(["resume", "resume", "pause", "limit"]),
        scope=st.sampled_from(SCOPES),
        rate=st.none() | st.integers(1, 3),
        max_active=st.none() | st.integers(1, 3),
    )
    def control(self, op: str, scope: str, rate: int | None, max_active: int | None) -> None:
        """Pause (no leases; enqueue, reports and sweeps go on), resume (either may repeat), or limit
        the queue (scope '') or a task: at most `rate` starts a second and `max_active` at once (neither:
        no limit). A task's cap counts its jobs already running."""
        if op in ("pause", "resume"):
            self.paused = op == "pause"
            self.emit(f"{op}d", "")
            if op == "resume":
                self.wake(WAKEUP_CAP)
            getattr(self.client, op)()
            return
        limit = None if rate is None and max_active is None else Cap(rate, max_active)
        raw = "" if limit is None else Limit(rate=rate, per=PER_MS / 1000, max_active=max_active).to_json()
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
        changed = before != limit
        args = [self.settings.events_maxlen, "limit", scope, raw]
        assert self.call_persisting_logs("control", self.keys.all, args) == int(changed)
        if not changed:
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
                pipe.zrange(getattr(keys, name), 0, -1, withscores=True)
            pipe.hgetall(keys.meta)
            pipe.llen(keys.wakeup)
            for worker in WORKERS:
                pipe.llen(claim_key(keys, worker))
            pipe.hgetall(f"{self.tag}:running")
            for scope in SCOPES:
                pipe.zrange(self.log_keys[scope], 0, -1, withscores=True)
            pipe.xrange(keys.events, f"({self.last_event}", "+")
            results = pipe.execute()
        records, payloads, waiting = results[:3]
        zsets = results[3 : 3 + len(ZSETS)]
        meta, wakeups, *rest = results[3 + len(ZSETS) :]
        claims, (running, *logs, entries) = rest[: len(WORKERS)], rest[len(WORKERS) :]

        assert sorted(records) == sorted(self.jobs), "job records (retention trims the oldest finished ones)"
        assert sorted(payloads) == sorted(self.jobs), "payloads"
        for job_id, job in self.jobs.items():
            got, want = observed(json.loads(records[job_id])), expected(job)
            differ = {name: (got[name], want[name]) for name in want if got[name] != want[name]}
            assert not differ, f"job {job_id} at {self.now}, (engine, model): {differ}"
        assert waiting == self.waiting_order(), "waiting, in lease order"
        scored = {"delayed": "due", "active": "deadline"}
        for name, members in zip(ZSETS, zsets, strict=True):
            ids = self.by_time(self.of_state(name), scored.get(name, "finished"))
            assert members == [(i, getattr(self.jobs[i], scored.get(name, "finished"))) for i in ids], name
        limits = {f"limit:{name}": limit.to_json() for name, limit in self.limits.items()}
        assert {k: json.loads(v) for k, v in meta.items() if k != "paused"} == limits, "limits"
        assert ("paused" in meta) == self.paused
        assert wakeups == self.wakeups, "wake-up tokens"
        assert claims == [0] * len(WORKERS), "no claim is left behind"
        assert {task: int(n) for task, n in running.items()} == self.running, "running jobs per capped task"
        for task, limit in self.limits.items():
            if task and limit.max is not None:
                assert self.running[task] == sum(j.task == task for j in self.jobs.values() if j.state == "active")
        for scope, log in zip(SCOPES, logs, strict=True):
            got = {int(token): int(t) for token, t in log}
            assert got.items() <= self.starts[scope].items(), f"rate log {scope!r}: only starts of leases"
            recent = {token: t for token, t in self.starts[scope].items() if t >= self.now - PER_MS}
            assert {token: t for token, t in got.items() if t >= self.now - PER_MS} == recent, f"rate window {scope!r}"
        assert [fields for _, fields in entries] == self.events, "events"
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
        "created": job.created,
        "due": job.due,
        "started": job.started,
        "finished": job.finished,
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
        "created": rec.get("created"),
        "due": rec.get("due"),
        "started": rec.get("started"),
        "finished": rec.get("finished"),
    }


@pytest.mark.timeout(600)  # a pass takes seconds; shrinking a failure may take minutes
def test_engine_matches_its_model(taskmesh_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class Engine(EngineMachine):
        url = taskmesh_redis_url

    # Every script call of this test, the client's too, reads the test's clock.
    monkeypatch.setattr(scripts, "source", clocked_source)
    monkeypatch.setattr(scripts, "sha", clocked_sha)
    run_state_machine_as_test(Engine, settings=MACHINE_SETTINGS)
