"""Security: only registered tasks run, nothing is unpickled or imported by name, names cannot escape a queue."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from taskmesh import Call, Client, JobFailed, JobNotFound, task
from taskmesh.names import check_job_id, check_name
from taskmesh.store.keys import QUEUE_KEY_NAMES, QueueKeys
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


INVISIBLE = {
    "C1 control": "job\x85id",
    "C1 CSI": "job\x9b2J",
    "line separator": "job\u2028id",
    "paragraph separator": "job\u2029id",
    "right-to-left override": "invoice-\u202egpj.exe",
    "left-to-right isolate": "job\u2066id",
    "no-break space": "job\u00a0id",
    "ideographic space": "job\u3000id",
    "zero-width space": "job\u200bid",
    "byte order mark": "\ufeffjob",
    "private use": "job\ue000",
    "lone surrogate": "job\ud800",
    "unassigned": "job\u0378",
    "Hangul filler": "job\u3164id",
    "Hangul choseong filler": "\u115fjob",
    "variation selector": "job\ufe0f",
    "combining grapheme joiner": "job\u034fid",
    "braille pattern blank": "job\u2800id",
    "Khmer inherent vowel": "job\u17b4id",
    "soft hyphen": "job\u00adid",
    "tag character": "job\U000e0041",
    "word joiner": "job\u2060id",
}


@pytest.mark.parametrize("bad", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_job_ids_with_invisible_or_reordering_characters_are_refused_and_nothing_written(
    taskmesh_client: Client, bad: str
) -> None:
    with pytest.raises(ValueError, match="invalid job id"):
        check_job_id(bad)
    with pytest.raises(ValueError, match="invalid job id"):
        echo.options(job_id=bad)
    with pytest.raises(ValueError, match="invalid job id"):
        taskmesh_client.enqueue_many([echo.call("ok"), Call(echo.name, ["x"], job_id=bad)])
    with pytest.raises(ValueError, match="invalid job id"):
        taskmesh_client.cancel(bad)
    assert list(taskmesh_client.redis.scan_iter(match=f"{{{taskmesh_client.settings.prefix}*")) == []


def test_printable_unicode_job_ids_are_kept_up_to_200_characters(taskmesh_client: Client) -> None:
    for job_id in ("rapport-été-2026", "注文-42", "emoji-🙂", "ü" * 200):
        handle = echo.options(job_id=job_id).enqueue("x")
        assert (handle.id, handle.created, handle.status().id) == (job_id, True, job_id)
    with pytest.raises(ValueError, match="invalid job id"):
        echo.options(job_id="ü" * 201)
    with pytest.raises(TypeError, match="job id must be a string"):
        check_job_id(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("reserved", ["nightly@1767225600000", "reports.daily:eu-1@0", "x@42"])
def test_a_producer_cannot_take_the_id_of_a_schedules_tick(taskmesh_client: Client, reserved: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        echo.options(job_id=reserved)
    with pytest.raises(ValueError, match="reserved"):
        taskmesh_client.submit(Call(echo.name, ["x"], job_id=reserved))
    with pytest.raises(ValueError, match="reserved"):
        taskmesh_client.enqueue_many([echo.call("ok"), Call(echo.name, ["x"], job_id=reserved)])
    assert list(taskmesh_client.redis.scan_iter(match=f"{{{taskmesh_client.settings.prefix}*")) == []
    with pytest.raises(JobNotFound):  # the schedule's job itself can still be looked up and cancelled
        taskmesh_client.cancel(reserved)


@pytest.mark.parametrize("job_id", ["user@example.com", "nightly@", "@1767225600000", "nightly@12x", "a@1@2"])
def test_ids_with_an_at_sign_outside_the_schedule_form_are_kept(taskmesh_client: Client, job_id: str) -> None:
    assert echo.options(job_id=job_id).enqueue("x").status().id == job_id
