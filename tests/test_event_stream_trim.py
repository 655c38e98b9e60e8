"""The event stream stays near its MAXLEN however many events one script sends.

Redis trims a stream approximately (``MAXLEN ~``: whole nodes of ``stream-node-max-entries`` entries), so
after a script the stream holds at least ``events_maxlen`` entries and fewer than that plus one node.
"""

from __future__ import annotations

import json
from typing import Any

from taskmesh import Client
from taskmesh.store import scripts
from taskmesh.testing import wait_until

MAXLEN = 100
JOBS = 300  # each script below sends this many events: three nodes of the default 100 entries


def stream_length(client: Client) -> int:
    return int(client.redis.xlen(client.keys("default").events))


def test_a_script_that_sends_many_events_leaves_the_stream_trimmed(taskmesh_client: Client) -> None:
    client = taskmesh_client
    settings = client.settings.replace(events_maxlen=MAXLEN)
    keys = client.keys("default")
    node = int(client.redis.config_get("stream-node-max-entries")["stream-node-max-entries"])
    assert 3 * node <= JOBS, "each script sends three nodes' worth of events"
    values = [value for i in range(JOBS) for value in (f"j{i}", "trim.t", "{}", 0, 0, 0)]

    scripts.call(client.redis, "enqueue", keys.enqueue, [MAXLEN, JOBS, *values])
    after_enqueue = stream_length(client)
    step = scripts.call(client.redis, "step", keys.all, scripts.step_args(settings, "w", JOBS, []))
    after_lease = stream_length(client)
    updates = [scripts.Update("c", job.id, job.token, "1") for job in scripts.parse_step(step)[1]]
    scripts.call(client.redis, "step", keys.all, scripts.step_args(settings, "w", 0, updates))
    after_complete = stream_length(client)

    lengths = (after_enqueue, after_lease, after_complete)
    assert len(updates) == JOBS
    assert all(MAXLEN <= length < MAXLEN + node for length in lengths), lengths


def test_a_schedule_firing_many_ticks_at_once_leaves_the_stream_trimmed(taskmesh_client: Client) -> None:
    """Each tick's job is added as it fires (its event sent at once, not batched)."""
    client = taskmesh_client
    keys = client.keys("default")
    node = int(client.redis.config_get("stream-node-max-entries")["stream-node-max-entries"])

    def cron(*args: object) -> Any:
        return scripts.call(client.redis, "cron", keys.all, [MAXLEN, *args])

    cron("init", "often", "v1", 1)
    last = json.loads(cron("look", "often", "v1", "0", "", 1)[0])["last"]
    wait_until(lambda: int(cron("look", "often", "v1", "0", "", 1)[1]) >= last + JOBS, message="ticks due")
    ticks = [last + 1 + i for i in range(JOBS)]
    fired = cron("fire", "often", "v1", "trim.t", "{}", 0, "allow", json.dumps(ticks), 0, 1)

    assert len(fired) == JOBS
    assert MAXLEN <= stream_length(client) < MAXLEN + node
