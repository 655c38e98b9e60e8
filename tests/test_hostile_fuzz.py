"""Hostile data against the engine: random sequences of ordinary operations (enqueue, leases, results,
retries, hand-backs, a worker that dies and the sweep, delayed jobs coming due) interleaved with corruption
of what the scripts read: job records, payloads, stray ids in the state sets, garbage limits and running
counts, and keys of the wrong type (broken, then repaired as an operator would). All on the real Lua
scripts and a real Redis; the test plays the worker, keeping an outcome Redis refused until it is taken,
as a worker does.

After every step, while no key is broken: every good job (never corrupted) is in exactly one state set,
the one its record names. At the end every key is repaired, the test's worker dies (its leases expire),
and a real worker drains the queue. Then every good job completed exactly once (its result, one
``completed`` event), every corrupted job failed with the reason (``CorruptRecord`` or ``PayloadError``),
a job whose enqueue raised either does not exist or completed once, and nothing is left waiting, delayed
or active. ``TASKMESH_FUZZ_EXAMPLES`` sets the number of sequences (default 40).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from typing import cast

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from taskmesh import Call, Client, JobState, PayloadError, RedisFull, Settings, task
from taskmesh.job import decode_payload
from taskmesh.runners import error_json
from taskmesh.store import scripts
from taskmesh.store.scripts import Update
from taskmesh.testing import drain

STATE_SETS = ("waiting", "delayed", "active", "completed", "failed", "cancelled")
#: Keys the machine may break: every key of the queue, and the derived ones its limits use.
BREAKABLE = ("jobs", "payloads", "waiting", "delayed", "events", "seq", "wakeup", "active", "completed", "failed",
             "meta", "running")
RECORDS = [
    '{"task":"fuzz.double","prio":0,"attempt":0,"sta',
    "[]",
    "17",
    '{"task":"fuzz.double","prio":0,"attempt":"1","stalls":0,"state":"waiting"}',
    '{"task":"fuzz.double","prio":0,"attempt":1,"stalls":0,"state":"flying"}',
    '{"task":"fuzz.double","prio":0,"attempt":0,"stalls":0,"state":"waiting","logs":[1]}',
    '{"prio":0,"attempt":0,"stalls":0,"state":"waiting"}',
    "\x00\xff",
]
#: Records that read well but say something else: another state (which no set may hold), odd values in
#: fields the scripts only store. The job must end in a final state, in the one set its record names.
ALTERED = [
    '{"task":"fuzz.double","prio":0,"attempt":1,"stalls":0,"state":"active"}',
    '{"task":"fuzz.double","prio":0,"attempt":1,"stalls":0,"state":"active","token":"7"}',
    '{"task":"fuzz.double","prio":0,"attempt":0,"stalls":0,"state":"completed","result":"1"}',
    '{"task":"fuzz.double","prio":0,"attempt":0,"stalls":0,"state":"delayed"}',
    '{"task":"fuzz.double","prio":0,"attempt":0,"stalls":0,"state":"waiting","created":"yesterday"}',
]
PAYLOADS = ["", "nope", "[" * 3000, '{"t":"fuzz.double","a":{},"k":[]}', '{"t":7,"a":[],"k":{}}', "\xff"]
LIMITS = ['{"rate":"x","per":1}', "[1]", "nope", '{"max":0}', '{"max":2}', '{"max":-1,"rate":1}', "{}"]

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("TASKMESH_FUZZ_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    print_blob=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


@task(name="fuzz.double")
def double(n: int) -> int:
    return 2 * n


class HostileMachine(RuleBasedStateMachine):
    url: str

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"z{uuid.uuid4().hex[:12]}"
        base = Settings(
            lease_seconds=3600,
            max_stalls=10_000,
            completed_keep=-1,
            completed_age=-1,
            failed_keep=-1,
            failed_age=-1,
            events_maxlen=1_000_000,
        )
        self.client = Client(self.url, prefix=self.prefix, settings=base)
        self.settings = self.client.settings
        self.keys = self.client.keys("default")
        self.conn = self.client.redis
        self.tag = f"{{{self.prefix}:default}}"
        self.good: dict[str, int] = {}  # acknowledged and never corrupted: id -> argument
        self.maybe: dict[str, int] = {}  # enqueue raised: may exist or not
        self.victims: dict[str, str] = {}  # corrupted: id -> the error type it must end with
        self.held: dict[str, int] = {}  # leased by this test's worker and not reported: id -> token
        self.pending: list[Update] = []  # outcomes Redis has not taken yet
        self.broken: dict[str, bool] = {}  # key -> whether its value was saved aside
        self.next_id = 0

    # -- helpers -------------------------------------------------------------------

    def key(self, name: str) -> str:
        return f"{self.tag}:{name}"

    def state_of(self, job_id: str) -> str | None:
        """The state the job's record names, None if it has none or it cannot be read (or a key is broken)."""
        try:
            raw = self.conn.hget(self.keys.jobs, job_id)
            return None if raw is None else str(json.loads(raw)["state"])
        except (redis.exceptions.ResponseError, ValueError, KeyError, TypeError):
            return None

    def unfinished(self) -> list[str]:
        return sorted(i for i in self.good if self.state_of(i) in ("waiting", "delayed", "active"))

    def step(self, want: int) -> None:
        """A worker's step: send every pending outcome and lease up to ``want``; on a refusal keep them."""
        updates = list(self.pending)
        try:
            args = scripts.step_args(self.settings, "W", want, updates)
            result = scripts.call(self.conn, "step", self.keys.all, args)
        except redis.exceptions.ResponseError:
            return
        accepted, leased, _ = scripts.parse_step(result)
        assert len(accepted) == len(updates)
        self.pending = self.pending[len(updates) :]
        for job in leased:
            try:
                decode_payload(job.payload, job.id)
            except PayloadError as exc:
                self.pending.append(Update("f", job.id, job.token, error_json(exc, tb=False), -1))
            else:
                self.held[job.id] = job.token

    def expire(self, job_id: str) -> None:
        """The clock passes this job's lease deadline (its holder is gone)."""
        self.held.pop(job_id, None)
        self.pending = [u for u in self.pending if u.id != job_id]
        with contextlib.suppress(redis.exceptions.ResponseError):
            self.conn.zadd(self.keys.active, {job_id: 1}, xx=True)

    def sweep(self) -> None:
        with contextlib.suppress(redis.exceptions.ResponseError):
            scripts.call(self.conn, "sweep", self.keys.all, scripts.sweep_args(self.settings))

    def repair(self, name: str) -> None:
        key = self.key(name)
        saved = self.broken.pop(name)
        self.conn.delete(key)
        if saved:
            self.conn.rename(f"{key}:saved", key)

    # -- ordinary operations -------------------------------------------------------

    @rule(count=st.integers(1, 3), delayed=st.booleans(), prio=st.integers(-1, 1), one_by_one=st.booleans())
    def enqueue(self, count: int, delayed: bool, prio: int, one_by_one: bool) -> None:
        ids = [f"j{self.next_id + i}" for i in range(count)]
        self.next_id += count
        delay = 3600 if delayed else None
        calls = [Call("fuzz.double", [int(i[1:])], job_id=i, delay=delay, priority=prio) for i in ids]
        try:
            if one_by_one:
                for job_id, call in zip(ids, calls, strict=True):
                    self.maybe[job_id] = int(job_id[1:])
                    self.client.submit(call)
                    self.good[job_id] = self.maybe.pop(job_id)
            else:
                self.maybe.update((i, int(i[1:])) for i in ids)
                self.client.enqueue_many(calls)
                for job_id in ids:
                    self.good[job_id] = self.maybe.pop(job_id)
        except (redis.exceptions.ResponseError, RedisFull):
            pass

    @rule(want=st.integers(0, 4))
    def lease(self, want: int) -> None:
        self.step(want)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 99), kind=st.sampled_from(["c", "c", "c", "retry", "r", "p"]))
    def report(self, index: int, kind: str) -> None:
        job_id = sorted(self.held)[index % len(self.held)]
        token = self.held[job_id]
        if kind == "p":
            self.pending.append(Update("p", job_id, token, "50"))
            return
        del self.held[job_id]
        if kind == "c":
            self.pending.append(Update("c", job_id, token, str(2 * int(job_id[1:]))))
        elif kind == "retry":
            self.pending.append(Update("f", job_id, token, '{"type":"E","message":"again"}', 0, 1_000))
        else:
            self.pending.append(Update("r", job_id, token))

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 99))
    def worker_dies(self, index: int) -> None:
        self.expire(sorted(self.held)[index % len(self.held)])
        self.sweep()

    @rule(index=st.integers(0, 99))
    def delayed_job_comes_due(self, index: int) -> None:
        try:
            due = cast(list[str], self.conn.zrange(self.keys.delayed, 0, -1))
            if due:
                self.conn.zadd(self.keys.delayed, {due[index % len(due)]: 1}, xx=True)
        except redis.exceptions.ResponseError:
            pass

    # -- hostile data -------------------------------------------------------------------

    @rule(index=st.integers(0, 99), raw=st.sampled_from(RECORDS))
    def corrupt_a_record(self, index: int, raw: str) -> None:
        candidates = self.unfinished()
        if candidates and "jobs" not in self.broken:
            job_id = candidates[index % len(candidates)]
            self.conn.hset(self.keys.jobs, job_id, raw.encode("latin-1"))
            del self.good[job_id]
            self.victims[job_id] = "CorruptRecord"

    @rule(index=st.integers(0, 99), raw=st.sampled_from(ALTERED))
    def alter_a_record(self, index: int, raw: str) -> None:
        candidates = self.unfinished()
        if candidates and "jobs" not in self.broken:
            job_id = candidates[index % len(candidates)]
            self.conn.hset(self.keys.jobs, job_id, raw)
            del self.good[job_id]
            self.victims[job_id] = "altered"

    @rule(index=st.integers(0, 99), raw=st.sampled_from(PAYLOADS))
    def corrupt_a_payload(self, index: int, raw: str) -> None:
        candidates = [i for i in self.unfinished() if self.state_of(i) != "active"]
        if candidates and "payloads" not in self.broken:
            job_id = candidates[index % len(candidates)]
            self.conn.hset(self.keys.payloads, job_id, raw.encode("latin-1"))
            del self.good[job_id]
            self.victims[job_id] = "PayloadError"

    @rule(where=st.sampled_from(["waiting", "delayed", "active"]), index=st.integers(0, 99), known=st.booleans())
    def add_a_stray_id(self, where: str, index: int, known: bool) -> None:
        """An id a state set should not hold: one with no record, or a job that is elsewhere."""
        ids = sorted(self.good)
        job_id = ids[index % len(ids)] if known and ids else f"stray{index}"
        if where not in self.broken:
            self.conn.zadd(self.key(where), {job_id: 1 if where != "waiting" else -10**15})

    @rule(task_name=st.sampled_from(["", "fuzz.double"]), raw=st.sampled_from(LIMITS))
    def garbage_limit(self, task_name: str, raw: str) -> None:
        if "meta" not in self.broken:
            self.conn.hset(self.keys.meta, f"limit:{task_name}", raw)

    @rule(raw=st.sampled_from(["x", "-5", "1.5", ""]))
    def garbage_running_count(self, raw: str) -> None:
        if "running" not in self.broken:
            self.conn.hset(self.key("running"), "fuzz.double", raw)

    @rule(name=st.sampled_from(BREAKABLE))
    def break_a_key(self, name: str) -> None:
        """A key of the wrong type (its value saved aside, for the repair)."""
        if name in self.broken:
            return
        key = self.key(name)
        saved = bool(self.conn.exists(key))
        if saved:
            self.conn.rename(key, f"{key}:saved")
        self.conn.set(key, "not what it should be")
        self.broken[name] = saved

    @precondition(lambda self: self.broken)
    @rule(index=st.integers(0, 99))
    def repair_a_key(self, index: int) -> None:
        self.repair(sorted(self.broken)[index % len(self.broken)])

    # -- checks -----------------------------------------------------------------------

    def sets_of(self, job_id: str, members: dict[str, set[str]]) -> list[str]:
        return [name for name in STATE_SETS if job_id in members[name]]

    def members(self) -> dict[str, set[str]]:
        return {name: set(cast(list[str], self.conn.zrange(getattr(self.keys, name), 0, -1))) for name in STATE_SETS}

    @invariant()
    def every_good_job_is_where_its_record_says(self) -> None:
        if self.broken:
            return
        members = self.members()
        for job_id in self.good:
            state = self.state_of(job_id)
            assert state is not None, f"good job {job_id} lost its record"
            held_by = self.sets_of(job_id, members)
            # A stray copy the test added may sit in a second set until a script meets it.
            assert state in held_by, f"good job {job_id} ({state}) is held by {held_by}"

    def teardown(self) -> None:
        try:
            self.finish_and_check()
        finally:
            keys = list(self.conn.scan_iter(match=f"{{{self.prefix}*", count=1000))
            if keys:
                self.conn.delete(*keys)
            self.client.close()

    def finish_and_check(self) -> None:
        for name in list(self.broken):
            self.repair(name)
        self.step(0)  # the outcomes kept while a key was broken
        assert not self.pending, f"outcomes still refused with every key repaired: {self.pending}"
        # The test's worker dies: every lease expires, those whose step reply it never read too; time passes
        # (each delayed job comes due) and a real worker drains the queue. Twice: the first drain may put a
        # job its record says is active back in 'active', with its lease expired, for the sweep.
        for _ in range(2):
            for job_id in cast(list[str], self.conn.zrange(self.keys.active, 0, -1)):
                self.expire(job_id)
            self.sweep()
            for job_id in cast(list[str], self.conn.zrange(self.keys.delayed, 0, -1)):
                self.conn.zadd(self.keys.delayed, {job_id: 1})
            drain(self.client, [double], raise_errors=False, concurrency=4)
        counts = self.client.counts()
        left = {name: self.conn.zrange(getattr(self.keys, name), 0, -1) for name in ("waiting", "delayed", "active")}
        records = {i: self.conn.hget(self.keys.jobs, i) for ids in left.values() for i in cast(list[str], ids)}
        assert (counts["waiting"], counts["delayed"], counts["active"]) == (0, 0, 0), (counts, left, records)

        outcomes = Counter(
            fields["job"]
            for _, fields in cast(list[tuple[str, dict[str, str]]], self.conn.xrange(self.keys.events))
            if fields["event"] in ("completed", "failed")
        )
        members = self.members()
        for job_id, arg in self.good.items():
            status = self.client.status(job_id)
            assert status is not None and status.state is JobState.COMPLETED, (job_id, status)
            assert status.result == 2 * arg
            assert outcomes[job_id] == 1, f"{job_id}: {outcomes[job_id]} outcomes recorded"
            assert self.sets_of(job_id, members) == ["completed"]
        for job_id in self.maybe:
            status = self.client.status(job_id)
            assert status is None or (status.state is JobState.COMPLETED and outcomes[job_id] == 1), (job_id, status)
        for job_id, error in self.victims.items():
            if error == "altered":  # ended where its record says, and finished
                state = self.state_of(job_id)
                assert state in ("completed", "failed", "cancelled"), (job_id, state)
                assert self.sets_of(job_id, members) == [state], (job_id, state, self.sets_of(job_id, members))
                assert outcomes[job_id] <= 1
                continue
            status = self.client.status(job_id)
            assert status is not None and status.state is JobState.FAILED, (job_id, status)
            assert (status.error or {}).get("type") == error, (job_id, status.error)
            assert self.sets_of(job_id, members) == ["failed"]


def test_hostile_data_loses_no_good_job_and_fails_each_bad_one_with_a_reason(taskmesh_redis_url: str) -> None:
    class Machine(HostileMachine):
        url = taskmesh_redis_url

    run_state_machine_as_test(Machine, settings=FUZZ_SETTINGS)


