"""The subprocess runner: every attempt in a fresh child process forked from the runner's fork server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Client, Job, JobFailed, JobState, Retry, Unrecoverable, task
from taskmesh.plugins import plugin_manager
from taskmesh.runners import RunnerRegistry
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
BOUND = 10.0  # every wait in these tests gives up after this long
FAST = {"renew_interval": 0.2, "grace_period": 0.5}  # cancel requests are seen within 0.2 s

LEAK: list[bytearray] = []  # grows in the task's process, never in the worker


@task(name="sub.identity", runner="subprocess")
def identity(job: Job, word: str) -> dict[str, Any]:
    job.progress({"step": "half"})
    job.log(f"child says {word}")
    job.log("x" * 1999)  # a log line longer than one pipe frame
    return {"pid": os.getpid(), "pgid": os.getpgid(0), "job": [job.id, job.attempt, job.token], "word": word}


@task(name="sub.async_echo", runner="subprocess")
async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return {"value": value, "big": "y" * 20_000}


@task(name="sub.broken", runner="subprocess")
def broken(x: int) -> None:
    raise ValueError(f"cannot handle {x}")


@task(name="sub.retries_once", runner="subprocess", retries=1, backoff=60)
def retries_once(job: Job) -> int:
    if job.attempt == 1:
        raise Retry(delay=0)
    return job.attempt


@task(name="sub.gives_up", runner="subprocess", retries=3)
def gives_up() -> None:
    raise Unrecoverable("never works")


def note_pids(path: str, *pids: int) -> None:
    Path(path + ".tmp").write_text(" ".join(map(str, pids)))
    os.replace(path + ".tmp", path)


@task(name="sub.spawns_and_sleeps", runner="subprocess", timeout=1.0)
def spawns_and_sleeps(path: str) -> None:
    grandchild = subprocess.Popen(["sleep", "60"])
    note_pids(path, os.getpid(), grandchild.pid, os.getppid())
    time.sleep(60)


@task(name="sub.ignores_sigterm", runner="subprocess", timeout=0.5)
def ignores_sigterm(path: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note_pids(path, os.getpid())
    time.sleep(60)


@task(name="sub.waits", runner="subprocess")
def waits(path: str) -> None:
    note_pids(path, os.getpid(), os.getppid())
    time.sleep(60)


@task(name="sub.dies", runner="subprocess")
def dies(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


@task(name="sub.hog", runner="subprocess")
def hog(megabytes: int) -> int:
    LEAK.append(bytearray(b"\x01" * (megabytes << 20)))  # touched, so resident
    return rss_kb(os.getpid())


@task(name="sub.ok", runner="subprocess")
def ok() -> str:
    return "ok"


@task(name="sub.large", runner="subprocess")
def large(megabytes: int) -> str:
    return "z" * (megabytes << 20)


TASKS = [
    *(identity, async_echo, broken, retries_once, gives_up, spawns_and_sleeps, ignores_sigterm, waits, dies, hog),
    *(ok, large),
]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def pids_in(path: Path) -> list[int]:
    wait_until(path.exists, timeout=BOUND, message=f"the task to write {path.name}")
    return [int(p) for p in path.read_text().split()]


def failure(handle: Any) -> dict[str, Any]:
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=BOUND)
    return info.value.error


def test_result_progress_and_logs_come_back_from_a_child_process(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    taskmesh_worker(TASKS)
    first, second = identity.enqueue("hi"), identity.enqueue("ho")
    one, two = first.result(timeout=BOUND), second.result(timeout=BOUND)
    assert one["word"] == "hi"
    assert one["pid"] != os.getpid() and one["pid"] != two["pid"], "a fresh process per attempt"
    assert one["pgid"] == one["pid"], "each attempt leads its own process group"
    assert one["job"][:2] == [first.id, 1] and one["job"][2] > 0
    status = first.status()
    assert status.progress == {"step": "half"}
    assert status.logs == ["child says hi", "x" * 1999]
    assert async_echo.enqueue([1, "two"]).result(timeout=BOUND) == {"value": [1, "two"], "big": "y" * 20_000}


def test_a_result_many_times_the_channels_buffer_comes_back_whole(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    """The child blocks on its channel until the worker has read it; what is left when it exits is read too."""
    taskmesh_worker(TASKS, concurrency=3)
    handles = [large.enqueue(3) for _ in range(3)]
    assert [len(h.result(timeout=BOUND)) for h in handles] == [3 << 20] * 3


def test_jobs_starting_together_on_a_new_worker_all_run(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    handles = [ok.enqueue() for _ in range(30)]
    taskmesh_worker(TASKS, concurrency=10)
    assert [h.result(timeout=BOUND) for h in handles] == ["ok"] * 30


def test_errors_come_back_with_the_childs_type_message_and_traceback(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    taskmesh_worker(TASKS)
    error = failure(broken.enqueue(7))
    assert (error["type"], error["message"]) == ("ValueError", "cannot handle 7")
    assert 'in broken\n    raise ValueError(f"cannot handle {x}")' in error["traceback"]
    handle = retries_once.enqueue()
    assert handle.result(timeout=BOUND) == 2, "Retry from the child spends an attempt and runs again"
    handle = gives_up.enqueue()
    assert failure(handle)["type"] == "Unrecoverable"
    assert handle.status().attempts == 1, "Unrecoverable from the child fails at once"


def test_a_timeout_kills_the_childs_whole_process_group(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS)
    path = tmp_path / "pids"
    handle = spawns_and_sleeps.enqueue(str(path))
    child, grandchild, server = pids_in(path)
    error = failure(handle)
    assert error["message"] == "timeout: the task ran longer than 1.0s"
    wait_until(lambda: not alive(child) and not alive(grandchild), timeout=BOUND, message="the group to be killed")
    assert alive(server), "the fork server lives on"
    assert ok.enqueue().result(timeout=BOUND) == "ok"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS)
    path = tmp_path / "pid"
    started = time.monotonic()
    handle = ignores_sigterm.enqueue(str(path))
    [child] = pids_in(path)
    assert failure(handle)["type"] == "JobTimeoutError"
    assert time.monotonic() - started >= 1.4, "SIGTERM was ignored: SIGKILL came after the grace (1 s)"
    assert not alive(child)


def test_cancelling_a_running_job_kills_its_process(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    worker = taskmesh_worker(TASKS, **FAST)
    path = tmp_path / "pids"
    handle = waits.enqueue(str(path))
    child, _ = pids_in(path)
    assert handle.cancel() == "cancelling"
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=BOUND)
    assert (info.value.state, info.value.error) == ("cancelled", {}), "a cancelled job ends without an error"
    assert handle.status().state is JobState.CANCELLED
    wait_until(lambda: not alive(child), timeout=BOUND, message="the child to be killed")
    assert worker.worker.stats.cancelled == 1


def test_a_crashed_child_fails_its_attempt_with_the_reason_and_the_worker_goes_on(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    worker = taskmesh_worker(TASKS)
    killed, exited = dies.enqueue("sigkill"), dies.enqueue("exit")
    assert failure(killed)["message"].startswith("the task's process was killed by SIGKILL")
    assert failure(exited) == {
        "type": "TaskCrashed",
        "message": "the task's process exited with code 3 without a result",
        "traceback": failure(exited)["traceback"],
    }
    assert ok.enqueue().result(timeout=BOUND) == "ok"
    assert worker.worker.stats.failed == 2


def test_memory_a_task_takes_stays_in_its_process(taskmesh_client: Client, taskmesh_worker: StartWorker) -> None:
    taskmesh_worker(TASKS)
    assert ok.enqueue().result(timeout=BOUND) == "ok"
    before = rss_kb(os.getpid())
    child_rss = [hog.enqueue(200).result(timeout=BOUND) for _ in range(3)]
    after = rss_kb(os.getpid())
    assert min(child_rss) > 200 * 1024, "each child really held 200 MB"
    assert max(child_rss) < 400 * 1024, "and did not inherit the previous attempt's leak"
    assert after - before < 50 * 1024, f"the worker grew by {(after - before) // 1024} MB"


def test_a_stopping_worker_kills_and_hands_back_what_runs_past_the_grace(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    worker = taskmesh_worker(TASKS, **FAST)
    path = tmp_path / "pids"
    handle = waits.enqueue(str(path))
    child, server = pids_in(path)
    stats = worker.stop(timeout=BOUND)
    assert stats.released == 1
    assert handle.status().state is JobState.WAITING and handle.status().attempts == 0
    assert not alive(child)
    wait_until(lambda: not alive(server), timeout=BOUND, message="the fork server to exit with its runner")


def test_losing_the_fork_server_fails_its_runs_and_the_next_job_gets_a_new_one(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS)
    path = tmp_path / "pids"
    handle = waits.enqueue(str(path))
    child, server = pids_in(path)
    os.kill(server, signal.SIGKILL)
    error = failure(handle)
    assert (error["type"], error["message"]) == ("TaskCrashed", "the subprocess runner's fork server exited")
    wait_until(lambda: not alive(child), timeout=BOUND, message="the orphaned child to be killed")
    assert ok.enqueue().result(timeout=BOUND) == "ok"


def test_a_task_that_is_not_at_the_top_level_of_a_module_fails_with_what_to_do(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    @task(name="sub.nested", runner="subprocess", retries=2)
    def nested() -> None: ...

    taskmesh_worker([nested])
    handle = nested.enqueue()
    error = failure(handle)
    assert error["type"] == "Unrecoverable"
    assert "not defined at the top level of an importable module" in error["message"]
    assert handle.status().attempts == 1


def test_the_subprocess_runner_registers_through_the_same_hook_as_inline() -> None:
    register = RunnerRegistry()
    plugin_manager(entry_points=False).hook.taskmesh_register_runners(register=register)
    assert {"inline", "subprocess"} <= set(register.factories)


def test_a_worker_killed_with_sigkill_leaves_no_task_process_behind(taskmesh_client: Client, tmp_path: Path) -> None:
    """Its fork server sees its stdin close, ends the running children and exits."""
    path = tmp_path / "pids"
    code = (
        "import sys, time; from taskmesh import Client; from taskmesh.testing import running_worker; "
        "import test_subprocess_runner as t; c = Client(sys.argv[1], prefix=sys.argv[2]); "
        "cm = running_worker(c, t.TASKS); cm.__enter__(); "
        "t.waits.options(client=c).enqueue(sys.argv[3]); time.sleep(60)"
    )
    settings = taskmesh_client.settings
    args = [sys.executable, "-c", code, settings.redis_url, settings.prefix, str(path)]
    worker = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        child, server = pids_in(path)
    finally:
        worker.kill()
        worker.wait(BOUND)
    wait_until(lambda: not alive(child) and not alive(server), timeout=BOUND, message="the task's processes to end")
