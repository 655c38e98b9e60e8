"""Security: only registered tasks run, nothing is unpickled or imported by name, names cannot escape a queue."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from taskmesh import Client, JobFailed, task
from taskmesh.store.keys import QUEUE_KEY_NAMES, QueueKeys, check_job_id, check_name
from taskmesh.testing import RunningWorker

StartWorker = Callable[..., RunningWorker]


@task(name="secure.echo")
def echo(value: str) -> str:
    return value


@pytest.mark.parametrize("name", ["antigravity.fly", "this.fly", "os.system"])
def test_a_job_naming_a_module_path_runs_nothing_and_imports_nothing(
    taskmesh_client: Client, taskmesh_worker: StartWorker, name: str
) -> None:
    before = set(sys.modules)
    taskmesh_worker([echo])
    handle = taskmesh_client.enqueue(name, "echo hacked")
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=5)
    assert info.value.error["type"] == "UnknownTaskError"
    assert not {"antigravity", "this"} & (set(sys.modules) - before)
    assert echo.enqueue("still fine").result(timeout=5) == "still fine"


def test_a_pickled_payload_is_refused_as_malformed(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    handle = echo.enqueue("x")
    pickled = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    taskmesh_client.redis.hset(taskmesh_client.keys("default").payloads, handle.id, pickled)
    taskmesh_worker([echo])
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=5)
    assert info.value.error["type"] == "PayloadError"


@pytest.mark.parametrize(
    "bad", ["a}b", "{x}", "a{b", "nul\x00", "sp ace", "", "x" * 101, "new\nline", "tab\t", "ünïcode"]
)
def test_names_that_could_escape_a_hash_tag_are_refused_before_anything_is_written(
    taskmesh_client: Client, bad: str
) -> None:
    for kind in ("queue name", "task name", "prefix"):
        with pytest.raises(ValueError):
            check_name(kind, bad)
    with pytest.raises(ValueError):
        taskmesh_client.enqueue(bad)
    with pytest.raises(ValueError):
        taskmesh_client.pause(bad)
    with pytest.raises(ValueError):
        echo.options(queue=bad)
    assert list(taskmesh_client.redis.scan_iter(match=f"{{{taskmesh_client.settings.prefix}*")) == []


@pytest.mark.parametrize("bad", ["", "a b", "{id}", "x}", "nul\x00", "\x7f", "x" * 201])
def test_job_ids_are_checked(taskmesh_client: Client, bad: str) -> None:
    with pytest.raises(ValueError):
        check_job_id(bad)
    with pytest.raises(ValueError):
        echo.options(job_id=bad)
    with pytest.raises(ValueError):
        taskmesh_client.cancel(bad)


@pytest.mark.parametrize(("prefix", "queue"), [("app", "default"), ("a:b", "c"), ("a", "b:c"), ("x.y-z_1", "Q.9")])
def test_every_key_of_a_queue_shares_one_slot_and_no_other_queue_has_it(prefix: str, queue: str) -> None:
    keys = QueueKeys.of(prefix, queue)
    assert len(keys.all) == len(QUEUE_KEY_NAMES)
    assert len({key_slot(k.encode()) for k in keys.all}) == 1
    assert all(k.startswith(f"{{{prefix}:{queue}}}:") for k in keys.all)
    other = QueueKeys.of(prefix, queue + "x")
    assert not set(keys.all) & set(other.all)
