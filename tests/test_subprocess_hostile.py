"""The subprocess runner against tasks that misbehave: stray writes, forged frames, escaping processes, secrets."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Client, ConfigurationError, JobFailed, JobState, Retry, task
from taskmesh.runners.subprocess import ChannelBroken, decode, next_frame, wanted_environment
from taskmesh.testing import RunningWorker, wait_until

StartWorker = Callable[..., RunningWorker]
BOUND = 10.0  # every wait in these tests gives up after this long
FAST = {"renew_interval": 0.2, "grace_period": 0.5}  # cancel requests are seen within 0.2 s
SECRET = "SOME_SECRET"
#: Read when the module is imported: in the fork server, that is with the variables the worker's tasks ask for.
SECRET_AT_IMPORT = os.environ.get(SECRET)


def note(path: str, text: str = "") -> None:
    Path(path + ".tmp").write_text(text)
    os.replace(path + ".tmp", path)


def await_file(path: str) -> None:
    """In a task: wait (bounded) until the test's other task has written ``path``."""
    deadline = time.monotonic() + BOUND
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)


def reachable_fds() -> list[int]:
    """Every file descriptor the task's process holds besides stdin, stdout and stderr."""
    return [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]


def write_everywhere(data: bytes) -> None:
    """Write ``data`` on every descriptor the process holds besides stdin, stdout and stderr."""
    for fd in reachable_fds():
        with contextlib.suppress(OSError):
            os.write(fd, data)


def write_through_proc(pid: int, data: bytes, pipes: bool) -> list[str]:
    """Reopen each socket (and pipe) of process ``pid`` through /proc and write ``data`` on it; the ones it could."""
    written = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{name}"
        with contextlib.suppress(OSError):
            mode = os.stat(path).st_mode
            if int(name) > 2 and (stat.S_ISSOCK(mode) or (pipes and stat.S_ISFIFO(mode))):
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                try:
                    os.write(fd, data)
                    written.append(f"{pid}:{name}")
                finally:
                    os.close(fd)
    return written


def forged_results(value: str, frames: str) -> bytes:
    """Frames that claim ``value`` as the result of runs 99 down to 1 (the test's runs are the first few), in
    the runner's old frame format (one pipe for every child, ``RUN FLAG SIZE``) or its current one (``RUN SIZE``)."""
    body = json.dumps({"k": "r", "v": json.dumps(value)}).encode()
    header = b"%d e %d\n" if frames == "old" else b"%d %d\n"
    return b"".join(header % (run, len(body)) + body for run in range(99, 0, -1))


@task(name="hostile.victim", runner="subprocess")
def victim(path: str) -> str:
    """Runs until the test lets it end, after the other task's attempt."""
    note(path + ".started")
    await_file(path + ".go")
    return "real"


@task(name="hostile.forger", runner="subprocess")
def forger(path: str, frames: str) -> str:
    await_file(path + ".started")
    write_everywhere(forged_results("FORGED by another job", frames))
    return "forged"


@task(name="hostile.scribbles", runner="subprocess")
def scribbles(path: str) -> str:
    await_file(path + ".started")
    write_everywhere(b"a stray line\n")
    return "scribbled"


@task(name="hostile.reopens", runner="subprocess")
def reopens(path: str) -> list[str]:
    """Tries the fork server's pipes and sockets, and the worker's sockets (its pipes are not taskmesh's)."""
    await_file(path + ".started")
    server = os.getppid()
    worker = int(Path(f"/proc/{server}/stat").read_text().rpartition(")")[2].split()[1])
    data = forged_results("FORGED by another job", "current")
    return write_through_proc(server, data, pipes=True) + write_through_proc(worker, data, pipes=False)


@task(name="hostile.ok", runner="subprocess")
def ok() -> str:
    return "ok"


def environment_seen() -> dict[str, Any]:
    grandchild = subprocess.run(["env"], capture_output=True, text=True, check=True, timeout=BOUND).stdout
    return {
        "secret": os.environ.get(SECRET),
        "redis_url": os.environ.get("TASKMESH_REDIS_URL"),
        "path": os.environ.get("PATH"),
        "grandchild_has_secret": f"{SECRET}=" in grandchild or "TASKMESH_REDIS_URL=" in grandchild,
        "secret_at_import": SECRET_AT_IMPORT,
    }


@task(name="hostile.env_default", runner="subprocess")
def env_default() -> dict[str, Any]:
    return environment_seen()


@task(name="hostile.env_asks", runner="subprocess", runner_options={"env": [SECRET, "TASKMESH_*"]})
def env_asks() -> dict[str, Any]:
    return environment_seen()


@task(name="hostile.env_of", runner="subprocess")
def env_of(names: list[str]) -> dict[str, Any]:
    """What the task's process sees of these variables, and which of them it started with (the fork server's)."""
    started = {entry.partition(b"=")[0].decode() for entry in Path("/proc/self/environ").read_bytes().split(b"\0")}
    return {"seen": {name: os.environ.get(name) for name in names}, "started": sorted(set(names) & started)}


@task(name="hostile.enqueues", runner="subprocess")
def enqueues() -> str:
    return ok.enqueue().id


@task(name="hostile.escapes", runner="subprocess", timeout=1.0)
def escapes(path: str, how: str) -> str:
    group = subprocess.Popen(["sleep", "60"], process_group=0)
    session = subprocess.Popen(["sleep", "60"], start_new_session=True)
    daemon = subprocess.run(  # sh exits at once: the sleep it started is orphaned
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], start_new_session=True, capture_output=True, text=True
    )
    note(path, f"{group.pid} {session.pid} {int(daemon.stdout)}")
    if how == "returns":
        return "left them running"
    time.sleep(60)
    return "slept"


@task(name="hostile.reports_early", runner="subprocess", timeout=5.0)
def reports_early(path: str) -> str:
    """A copy of the task's process forked without ``os._exit`` reports the outcome; the process itself goes on."""
    note(path, str(os.getpid()))
    if os.fork() == 0:
        return "reported early"
    time.sleep(60)
    return "slept"


@task(name="hostile.server", runner="subprocess")
def server() -> int:
    """The fork server's pid."""
    return os.getppid()


#: A task module that stops at import without its configuration (which the worker has, but its task does not ask for).
EXITS_AT_IMPORT = """
import os, sys
from taskmesh import task

if "APP_DATABASE_URL" not in os.environ:
    sys.exit("APP_DATABASE_URL is not set")

@task(name="hostile.needs_database", runner="subprocess")
def needs_database() -> str:
    return "connected"
"""


@task(name="hostile.bad_env", runner="subprocess", runner_options={"env": SECRET})
def bad_env() -> None: ...


@task(name="hostile.bad_option", runner="subprocess", runner_options={"environment": [SECRET]})
def bad_option() -> None: ...


TASKS = [victim, forger, scribbles, reopens, ok, env_default, env_asks, env_of, escapes, enqueues, reports_early]


def failure(handle: Any) -> dict[str, Any]:
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=BOUND)
    return info.value.error


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"


def test_a_stray_line_on_every_fd_a_task_holds_fails_that_attempt_only(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS, concurrency=4)
    path = str(tmp_path / "run")
    running, stray = victim.enqueue(path), scribbles.enqueue(path)
    error = failure(stray)
    assert error["type"] == "TaskCrashed"
    assert error["message"].startswith("the task's channel to the worker broke: it carried b'a stray line\\n'")
    note(path + ".go")
    assert running.result(timeout=BOUND) == "real", "a job running meanwhile ends with its own result"
    assert [ok.enqueue().result(timeout=BOUND) for _ in range(5)] == ["ok"] * 5, "later jobs run"


@pytest.mark.parametrize(
    ("frames", "refused"),
    [
        ("old", "it carried b'99 e 44\\n', which is not a frame header"),
        ("current", "it carried a frame of run 99, not of this attempt's run"),
    ],
)
def test_a_forged_result_for_another_running_job_is_not_recorded_as_its_result(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path, frames: str, refused: str
) -> None:
    taskmesh_worker(TASKS, concurrency=4)
    path = str(tmp_path / "run")
    running, forging = victim.enqueue(path), forger.enqueue(path, frames)
    ended = (JobState.COMPLETED, JobState.FAILED)
    wait_until(lambda: forging.status().state in ended, timeout=BOUND, message="the forging job to end")
    note(path + ".go")
    assert running.result(timeout=BOUND) == "real"
    error = failure(forging)
    assert error["type"] == "TaskCrashed"
    assert error["message"].startswith(f"the task's channel to the worker broke: {refused}")
    assert ok.enqueue().result(timeout=BOUND) == "ok"


def test_a_task_cannot_reach_the_runners_channels_through_proc(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS, concurrency=4)
    path = str(tmp_path / "run")
    running, reopening = victim.enqueue(path), reopens.enqueue(path)
    assert reopening.result(timeout=BOUND) == [], "no pipe or socket of the fork server's or the worker's reopened"
    note(path + ".go")
    assert running.result(timeout=BOUND) == "real"


def test_a_task_sees_a_minimal_environment_unless_its_options_ask_for_more(
    taskmesh_client: Client, taskmesh_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "s3cret")
    monkeypatch.setenv("TASKMESH_REDIS_URL", taskmesh_client.settings.redis_url)
    taskmesh_worker(TASKS)
    default = env_default.enqueue().result(timeout=BOUND)
    assert (default["secret"], default["redis_url"]) == (None, None), "the worker's secrets are not inherited"
    assert default["path"] == os.environ["PATH"], "what a process needs to run is"
    assert not default["grandchild_has_secret"], "nor by the processes the task starts"
    asks = env_asks.enqueue().result(timeout=BOUND)
    assert (asks["secret"], asks["redis_url"]) == ("s3cret", taskmesh_client.settings.redis_url)
    assert asks["grandchild_has_secret"]
    assert asks["secret_at_import"] == "s3cret", "the task's module was imported with what its tasks ask for"


def test_a_task_sees_what_it_needs_to_find_libraries_certificates_and_devices_but_not_proxy_urls(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needed = {
        "LD_LIBRARY_PATH": str(tmp_path),  # an empty directory: nothing is loaded from it
        "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem",
        "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca.pem",
        "NO_PROXY": "localhost,.internal",
        "CUDA_VISIBLE_DEVICES": "1",
        "NVIDIA_VISIBLE_DEVICES": "1",
    }
    proxies = {name: "http://user:pass@proxy:3128" for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY")}
    for name, value in {**needed, **proxies}.items():
        monkeypatch.setenv(name, value)
    taskmesh_worker(TASKS)
    child = env_of.enqueue([*needed, *proxies]).result(timeout=BOUND)
    assert {name: child["seen"][name] for name in needed} == needed
    assert "LD_LIBRARY_PATH" in child["started"], "the fork server, which loads the task modules, has it"
    assert [child["seen"][name] for name in proxies] == [None] * 3, "a proxy URL can carry a password"
    assert not set(proxies) & set(child["started"])


def test_a_task_that_enqueues_without_the_workers_redis_url_is_told_how_to_ask_for_it(
    taskmesh_client: Client, taskmesh_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKMESH_REDIS_URL", taskmesh_client.settings.redis_url)
    taskmesh_worker(TASKS)
    with pytest.raises(JobFailed) as info:
        enqueues.enqueue().result(timeout=BOUND)
    assert info.value.error["type"] == "ConfigurationError"
    assert "runner_options={'env': ['TASKMESH_*']}" in info.value.error["message"]


@pytest.mark.parametrize("how", ["timeout", "cancel", "returns"])
def test_processes_a_task_starts_in_a_group_or_session_of_their_own_end_with_its_attempt(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path, how: str
) -> None:
    taskmesh_worker(TASKS, **FAST)
    path = tmp_path / "pids"
    handle = escapes.enqueue(str(path), how)
    wait_until(path.exists, timeout=BOUND, message="the task to start its processes")
    pids = [int(pid) for pid in path.read_text().split()]
    try:
        if how == "timeout":
            assert failure(handle)["type"] == "JobTimeoutError"
        elif how == "cancel":
            assert handle.cancel() == "cancelling"
            failure(handle)
            assert handle.status().state is JobState.CANCELLED
        else:
            assert handle.result(timeout=BOUND) == "left them running"
        wait_until(lambda: not any(map(alive, pids)), timeout=BOUND, message="the escaped processes to be killed")
    finally:
        for pid in pids:  # on a failure, leave nothing behind
            with contextlib.suppress(OSError):
                if alive(pid) and b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


def test_a_tasks_process_that_goes_on_after_its_outcome_is_killed_when_its_attempt_ends(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path
) -> None:
    taskmesh_worker(TASKS)
    path = tmp_path / "pid"
    assert reports_early.enqueue(str(path)).result(timeout=BOUND) == "reported early"
    pid = int(path.read_text())
    try:
        wait_until(lambda: not alive(pid), timeout=BOUND, message="the task's process to be killed")
    finally:
        with contextlib.suppress(OSError):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_task_module_that_exits_at_import_fails_its_jobs_with_its_message_and_the_fork_server_lives(
    taskmesh_client: Client, taskmesh_worker: StartWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hostile_exits_at_import.py").write_text(EXITS_AT_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("APP_DATABASE_URL", "postgres://db")
    try:
        needs_database = importlib.import_module("hostile_exits_at_import").needs_database
        taskmesh_worker([needs_database, server])  # the fork server imports the module at start
        before = server.enqueue().result(timeout=BOUND)
        for _ in range(2):
            error = failure(needs_database.enqueue())
            assert (error["type"], error["message"]) == ("SystemExit", "APP_DATABASE_URL is not set")
        assert server.enqueue().result(timeout=BOUND) == before, "the same fork server runs the jobs"
    finally:
        sys.modules.pop("hostile_exits_at_import", None)


def test_runner_options_other_than_a_list_of_variables_stop_the_worker_at_start(
    taskmesh_client: Client, taskmesh_worker: StartWorker
) -> None:
    with pytest.raises(ConfigurationError, match=r"runner_options\['env'\] must be a list of the environment var"):
        taskmesh_worker([bad_env])
    with pytest.raises(ConfigurationError, match=r"reads only runner_options\['env'\], not \['environment'\]"):
        taskmesh_worker([bad_option])


def test_the_options_name_variables_and_prefixes() -> None:
    def wanted(env: Any) -> tuple[frozenset[str], tuple[str, ...]]:
        return wanted_environment(task(name="hostile.options", runner="subprocess", runner_options={"env": env})(ok.fn))

    assert wanted(["DATABASE_URL", "AWS_*"]) == (frozenset({"DATABASE_URL"}), ("AWS_",))
    assert wanted(("*",)) == (frozenset(), ("",)), "every variable"
    for bad in ["DATABASE_URL", [""], ["A=B"], ["A*B"], ["**"], [1], {"A": "b"}, None]:
        with pytest.raises(ConfigurationError, match=r"must be a list of the environment variables"):
            wanted(bad)


def test_a_frame_is_taken_whole_and_only_for_its_own_run() -> None:
    unread = bytearray(b"7 2\n{}7 3\n[1")
    assert next_frame(7, unread) == b"{}"
    assert next_frame(7, unread) is None, "not whole yet"
    unread += b"]"
    assert (next_frame(7, unread), unread) == (b"[1]", bytearray())
    with pytest.raises(ChannelBroken, match=r"^it carried a frame of run 8, not of this attempt's run$"):
        next_frame(7, bytearray(b"8 2\n{}"))
    with pytest.raises(ChannelBroken, match=r"^it carried b'x{48}', which is not a frame header$"):
        next_frame(7, bytearray(b"x" * 100))
    with pytest.raises(ChannelBroken, match=r"^it carried b'7 -1\\n', which is not a frame header$"):
        next_frame(7, bytearray(b"7 -1\n"))
    with pytest.raises(ChannelBroken, match=r"message of 999999999 bytes, over the 64 MiB a message may have"):
        next_frame(7, bytearray(b"7 999999999\n"))


def test_only_well_formed_messages_are_acted_on() -> None:
    assert decode(b'{"k":"r","v":"[1]"}') == ("r", [1])
    assert decode(b'{"k":"l","v":"[1"}') == ("l", "[1"), "a log line is text"
    kind, error = decode(b'{"k":"e","type":"Retry","message":"m","kind":"retry","delay":null}')
    assert kind == "e" and isinstance(error, Retry)
    for bad in [
        b"not json",
        b"[]",
        b'{"k":"x","code":0}',  # the fork server's report, not the task's
        b'{"k":"r","v":"[["}',
        b'{"k":"r","v":1}',
        b'{"k":"e","type":1,"message":"m"}',
        b'{"k":"e","type":"T","message":"m","kind":"retry","delay":"soon"}',
        b'{"k":"e","type":"T","message":"m","kind":"slowdown","delay":-1}',
        b"[" * 100_000,
    ]:
        with pytest.raises(ChannelBroken, match="which is not a message of the task's process"):
            decode(bad)
