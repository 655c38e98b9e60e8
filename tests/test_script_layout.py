"""What the Lua scripts and Python share is written once, and every key a script touches comes in its KEYS.

``scripts.source()`` declares the queue's keys (``K_JOBS = KEYS[1]``, ... in the order of QUEUE_KEY_NAMES)
and their number (``N_QUEUE_KEYS``), and writes the position of each field of ``Update`` that a script reads
(``u[U_KIND]``, ...); the scripts use only these names. Redis Cluster routes a script by its KEYS and ACL
rules are checked against them, so a script that names a key itself reaches past both: only a task's rate
log (one per task) is named by the scripts, from ``K_RATE``. Here every script runs with each command's
key checked against its KEYS, on the paths that touch the most keys.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from taskmesh import Client, JobState, Settings
from taskmesh.store import scripts
from taskmesh.store.keys import QUEUE_KEY_NAMES, QueueKeys, claim_key
from taskmesh.store.scripts import Leased, Update
from taskmesh.testing import wait_until

LUA = Path(scripts.__file__).resolve().parent / "lua"
#: Each script's text with every ``redis.call`` / ``redis.pcall`` checking its key first (TIME has none):
#: the script fails at its end, naming each key it touched that is not in its KEYS nor a task's rate log.
CHECKED = """
local given, undeclared, RATE = {}, {}, KEYS[%d]
for _, key in ipairs(KEYS) do given[key] = true end
local function touch(key)
  local rate_log = RATE and type(key) == 'string' and string.sub(key, 1, #RATE + 1) == RATE .. ':'
  if not (given[key] or rate_log) then undeclared[#undeclared + 1] = tostring(key) end
end
local function checked_call(command, key, ...)
  if command == 'TIME' then return redis.call(command) end
  touch(key)
  return redis.call(command, key, ...)
end
local function checked_pcall(command, key, ...)
  if command == 'TIME' then return redis.pcall(command) end
  touch(key)
  return redis.pcall(command, key, ...)
end
local function script()
%s
end
local result = script()
if #undeclared > 0 then return redis.error_reply('touched keys not in KEYS: ' .. table.concat(undeclared, ' ')) end
return result
"""


def code_of(text: str) -> str:
    """Lua text without its comments."""
    return re.sub(r"--.*", "", text)


def checked_source(name: str) -> str:
    body = scripts.source(name).replace("redis.call(", "checked_call(").replace("redis.pcall(", "checked_pcall(")
    return CHECKED % (QUEUE_KEY_NAMES.index("rate") + 1, body)


def test_every_key_and_update_field_a_script_names_is_one_python_declares() -> None:
    """A key or an update field renamed on the Python side (QUEUE_KEY_NAMES, Update) leaves no script using
    the old name (an unknown update field stops ``source()``), and no script reads KEYS or an update by a
    number of its own."""
    for name in scripts.SCRIPT_NAMES:
        code = code_of(scripts.source(name))
        declared = {local.strip() for group in re.findall(r"\blocal ([\w, ]+?) =", code) for local in group.split(",")}
        used = set(re.findall(r"\b[KUN]_[A-Z_]+\b", code))
        assert used - declared == set(), f"{name}.lua uses names the prelude does not declare"
    for path in LUA.glob("*.lua"):
        code = code_of(path.read_text())
        assert re.findall(r"KEYS\[\d|\bu\[\d", code) == [], f"{path.name} reads KEYS or an update by number"


class Checked:
    """Calls the scripts of one queue with the key check on."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.conn, self.settings = client.redis, settings
        self.keys: QueueKeys = client.keys("default")

    def __call__(self, name: str, keys: tuple[str, ...], args: list[Any]) -> Any:
        return self.conn.eval(checked_source(name), len(keys), *keys, *args)

    def enqueue(self, *jobs: tuple[str, str, int]) -> list[Any]:
        """Jobs (id, task, delay ms) in one call: a single one takes the enqueue script's fast path."""
        values = [value for job_id, task, delay in jobs for value in (job_id, task, "{}", 0, delay, 0)]
        return list(self("enqueue", self.keys.enqueue, [self.settings.events_maxlen, len(jobs), *values]))

    def step(self, want: int, updates: list[Update], claim: str | None = None) -> list[Any]:
        keys = self.keys.all if claim is None else (*self.keys.all, claim)
        result = list(self("step", keys, scripts.step_args(self.settings, "w", want, updates)))
        assert scripts.step_lease_refused(result) is None and scripts.step_events_refused(result) is None
        return result

    def control(self, *args: Any) -> Any:
        return self("control", self.keys.all, [self.settings.events_maxlen, *args])

    def cron(self, *args: Any) -> Any:
        return self("cron", self.keys.all, [self.settings.events_maxlen, *args])


def test_every_script_touches_only_keys_it_is_given(taskmesh_client: Client) -> None:
    client = taskmesh_client
    run = Checked(client, client.settings.replace(completed_keep=0, failed_keep=0))  # finished jobs are trimmed
    keys, limit = run.keys, {"rate": 100, "per": 60_000, "max": 10}
    assert [run.control("pause"), run.control("resume")] == [1, 1]
    assert [run.control("limit", "", json.dumps(limit)), run.control("limit", "lay.t", json.dumps(limit))] == [1, 1]
    assert run.enqueue(("a", "lay.t", 0)) == [1, "waiting"]
    batch = run.enqueue(("a", "lay.t", 0), ("b", "lay.t", 0), ("c", "lay.u", 0), ("d", "lay.u", 3_600_000))
    assert batch == [0, "waiting", 1, "waiting", 1, "waiting", 1, "delayed"]
    for job_id in ("e", "f", "g"):
        run.enqueue((job_id, "lay.u", 0))
    client.redis.zadd(keys.delayed, {"d": 0})  # due: the step promotes it
    client.redis.hset(keys.jobs, "bad", "not a record")  # the step fails it (see contain)
    client.redis.zadd(keys.waiting, {"bad": -1})
    claim = claim_key(keys, "w")
    client.redis.rpush(claim, "1")

    leased = {job.id: job for job in scripts.parse_step(run.step(8, [], claim))[1]}
    assert sorted(leased) == ["a", "b", "c", "d", "e", "f", "g"]
    a, b, c, d, e, f, g = (leased[job_id] for job_id in "abcdefg")
    lost, cancelling = run("renew", keys.all, scripts.renew_args(run.settings, [(a.id, a.token), ("x", 1)]))
    assert (lost, cancelling) == (["x"], [])
    assert run("cancel", keys.all, scripts.cancel_args(run.settings, f.id)) == "cancelling"
    updates = [
        Update("p", a.id, a.token, "0.5"),
        Update("l", a.id, a.token, "a line"),
        Update("c", a.id, a.token, "1"),
        Update("f", b.id, b.token, "{}", 0, 3),
        Update("f", c.id, c.token, "{}", -1, 1),
        Update("r", d.id, d.token),
        Update("d", e.id, e.token, "{}", 60_000),
        Update("c", f.id, f.token, "1"),
    ]
    assert scripts.parse_step(run.step(0, updates))[0] == [True] * len(updates)
    client.redis.zadd(keys.active, {g.id: 0})  # its lease expired
    client.redis.zadd(keys.active, {b.id: 0})  # a stray entry: its record says waiting
    assert run("sweep", keys.all, scripts.sweep_args(run.settings)) == [[g.id], []]
    assert run("cancel", keys.all, scripts.cancel_args(run.settings, g.id)) == "cancelled"

    assert run.cron("init", "nightly", "v1", 1) == 1
    last = json.loads(run.cron("look", "nightly", "v1", "1", "", 1)[0])["last"]
    wait_until(lambda: int(run.cron("look", "nightly", "v1", "0", "", 1)[1]) > last, message="the clock passed")
    fired = run.cron("fire", "nightly", "v1", "lay.u", "{}", 0, "allow", json.dumps([last + 1]), 0, 1)
    assert fired == [f"nightly@{last + 1}"]
    assert [run.cron(op, "nightly", "v2", 2) for op in ("change", "pause", "resume", "remove")] == [1] * 4
    assert run("access", keys.all, [run.settings.events_maxlen]) == []

    states = {job_id: status.state for job_id in "abcdefg" if (status := client.status(job_id)) is not None}
    assert states == {"b": JobState.WAITING, "d": JobState.WAITING, "e": JobState.DELAYED}  # the others were trimmed
    assert client.status("bad") is None  # failed, then trimmed


def test_a_step_reply_reads_back_position_by_position(taskmesh_client: Client) -> None:
    """Each part of the step's reply is read by the helper for it: accepted flags, the leased jobs' fields,
    when the next delayed job is due, whether a rate limit held a job back, why a lease was refused, and
    the error a refused event met."""
    client = taskmesh_client
    run = Checked(client, client.settings)
    keys = run.keys
    run.control("limit", "", json.dumps({"rate": 2, "per": 3_600_000}))
    run.enqueue(("first", "lay.one", 0))
    run.enqueue(("second", "lay.two", 0))
    run.enqueue(("third", "lay.three", 0))
    run.enqueue(("later", "lay.one", 60_000))
    client.redis.hset(keys.payloads, "second", "the payload")
    [first] = scripts.parse_step(run.step(1, []))[1]

    client.redis.delete(keys.events)
    client.redis.set(keys.events, "not a stream")  # every event is refused
    updates = [Update("c", first.id, first.token, "1"), Update("c", first.id, first.token + 1, "1")]
    result = list(run("step", keys.all, scripts.step_args(run.settings, "w", 2, updates)))
    accepted, leased, next_due = scripts.parse_step(result)
    token = int(client.redis.get(keys.seq) or 0)
    assert accepted == [True, False]
    assert leased == [Leased("second", token, 1, "lay.two", "the payload")]
    assert next_due is not None and 50 < next_due <= 60  # the delayed job, before the rate window frees a start
    assert scripts.step_held(result)  # the third job waits for the rate window
    assert scripts.step_lease_refused(result) is None
    assert "WRONGTYPE" in (scripts.step_events_refused(result) or "")

    client.redis.delete(keys.events)
    client.redis.delete(keys.rate)
    client.redis.set(keys.rate, "not a log")  # the lease is refused
    result = list(run("step", keys.all, scripts.step_args(run.settings, "w", 1, [])))
    assert scripts.parse_step(result)[1] == []
    assert "WRONGTYPE" in (scripts.step_lease_refused(result) or "")
    assert scripts.step_events_refused(result) is None
