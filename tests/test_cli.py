"""The ``taskmesh`` command line, run as a real subprocess against the test Redis."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskmesh import Call, Client, JobState, task
from taskmesh.events import Event
from taskmesh.store import connect
from taskmesh.testing import RunningWorker

TASKS = """
import time
from pathlib import Path

from taskmesh import task


@task(name="cli.add", queue="math")
def add(x: int, y: int) -> int:
    return x + y


@task(name="cli.shout")
def shout(word: str, times: int = 1) -> str:
    return (word.upper() + " ") * times


@task(name="cli.wait_for")
def wait_for(path: str) -> str:
    deadline = time.monotonic() + 20
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"
"""

DUPLICATE = """
from taskmesh import task


@task(name="cli.add")
def plus(x: int, y: int) -> int:
    return x + y
"""

UNREACHABLE = "redis://127.0.0.1:1/0"


@task(name="cli.echo")
def echo(value: Any) -> Any:
    return value


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "clitasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def cli_env(taskmesh_redis_url: str, taskmesh_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMESH_")}
    env.update(TASKMESH_REDIS_URL=taskmesh_redis_url, TASKMESH_PREFIX=taskmesh_prefix)
    return env


@pytest.fixture
def cli(workdir: Path, cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``taskmesh ARGS...`` to completion (bounded; killed on timeout)."""

    def run(*args: str, timeout: float = 15, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskmesh", *args],
            cwd=workdir,
            env={**cli_env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def _default_sigint() -> None:
    # A shell that starts jobs in the background ignores SIGINT for them, and Python keeps an ignored
    # SIGINT ignored; Ctrl-C on a terminal is what these tests model.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn(workdir: Path, cli_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``taskmesh ARGS...`` in the background; every process is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmesh", *args],
            cwd=workdir,
            env={**cli_env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskmesh: ")
    return lines[0]


def _wait_for_event(client: Client, queue: str, job_id: str, name: str) -> Event:
    for event in client.events([queue], since="0", timeout=10):
        if event.job_id == job_id and event.name == name:
            return event
    raise AssertionError(f"no {name!r} event for job {job_id} within 10s")


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline()


# -- enqueue -------------------------------------------------------------------


def test_enqueue_prints_job_id_and_stores_job(cli: Any, taskmesh_client: Client) -> None:
    result = cli("enqueue", "cli.shout", "--args", '["hi"]', "--kwargs", '{"times": 2}', "--priority", "5")

    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    status = taskmesh_client.status(job_id)
    assert status is not None
    assert (status.task, status.state, status.priority) == ("cli.shout", JobState.WAITING, 5)


def test_enqueue_existing_job_id_reports_it_and_creates_nothing(cli: Any, taskmesh_client: Client) -> None:
    first = cli("enqueue", "cli.add", "--args", "[1, 2]", "--queue", "math", "--job-id", "sum-1")
    again = cli("enqueue", "cli.add", "--args", "[5, 5]", "--queue", "math", "--job-id", "sum-1")

    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert first.stdout.strip() == again.stdout.strip() == "sum-1"
    assert first.stderr == ""
    assert "job sum-1 already exists (state waiting)" in again.stderr
    assert taskmesh_client.counts("math")["waiting"] == 1


def test_enqueue_with_bad_json_names_the_flag_in_one_line(cli: Any, taskmesh_client: Client) -> None:
    not_json = _one_error_line(cli("enqueue", "cli.add", "--args", "[1, 2"))
    not_an_object = _one_error_line(cli("enqueue", "cli.add", "--kwargs", "[1]"))

    assert "--args is not valid JSON" in not_json
    assert "--kwargs must be a JSON object" in not_an_object
    assert taskmesh_client.queues() == []


# -- run -------------------------------------------------------------------------


def test_run_burst_runs_queued_jobs_on_the_tasks_queues_and_exits_0(cli: Any, taskmesh_client: Client) -> None:
    added = taskmesh_client.submit(Call("cli.add", (2, 3), queue="math"))
    shouted = taskmesh_client.enqueue("cli.shout", "go")

    result = cli("run", "clitasks", "--burst")

    assert result.returncode == 0, result.stderr
    assert added.result(timeout=5) == 5
    assert shouted.result(timeout=5) == "GO "
    start = next(line for line in result.stderr.splitlines() if "starting" in line)
    assert "queues default,math" in start
    assert "cli.add, cli.shout, cli.wait_for" in start


def test_sigterm_lets_active_job_finish_within_grace_period(spawn: Any, taskmesh_client: Client, workdir: Path) -> None:
    go = workdir / "go"
    handle = taskmesh_client.enqueue("cli.wait_for", str(go))
    worker = spawn("run", "clitasks")
    _wait_for_event(taskmesh_client, "default", handle.id, "active")

    worker.send_signal(signal.SIGTERM)
    go.touch()

    assert worker.wait(timeout=10) == 0
    status = handle.status()
    assert (status.state, status.result, status.attempts) == (JobState.COMPLETED, "released", 1)


def test_sigterm_hands_back_job_still_running_after_grace_period(spawn: Any, taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("cli.wait_for", "never-created")
    worker = spawn("run", "clitasks", TASKMESH_GRACE_PERIOD="0.3")
    _wait_for_event(taskmesh_client, "default", handle.id, "active")

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.WAITING, 0)
    assert _wait_for_event(taskmesh_client, "default", handle.id, "released")


# -- status and queues ---------------------------------------------------------


def test_status_shows_summary_and_json(cli: Any, taskmesh_client: Client, taskmesh_drain: Any) -> None:
    handle = echo.enqueue({"rows": 3})
    taskmesh_drain([echo])

    text = cli("status", handle.id)
    as_json = cli("status", handle.id, "--json")

    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert "state:     completed" in text.stdout
    assert 'result:    {"rows": 3}' in text.stdout
    data = json.loads(as_json.stdout)
    assert (data["id"], data["state"], data["result"], data["attempts"]) == (handle.id, "completed", {"rows": 3}, 1)


def test_status_of_unknown_job_is_one_line_error(cli: Any, taskmesh_client: Client) -> None:
    line = _one_error_line(cli("status", "no-such-job", "--queue", "math"))

    assert "no-such-job" in line and "not found" in line and "'math'" in line


def test_queues_shows_counts_per_state_and_live_workers(
    cli: Any, taskmesh_client: Client, taskmesh_worker: Callable[..., RunningWorker]
) -> None:
    taskmesh_client.enqueue("cli.shout", "a")
    taskmesh_client.enqueue("cli.shout", "b")
    taskmesh_client.submit(echo.options(delay=60, queue="later").call(1))
    worker = taskmesh_worker([echo], queues=["idle"])

    text = cli("queues")
    as_json = cli("queues", "--json")

    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["queues"]["default"]["waiting"] == 2
    assert data["queues"]["later"]["delayed"] == 1
    assert data["queues"]["idle"]["waiting"] == 0
    assert data["workers"] == [worker.worker.id]
    header = ["QUEUE", "WAITING", "DELAYED", "ACTIVE", "COMPLETED", "FAILED", "CANCELLED"]
    assert text.stdout.splitlines()[0].split() == header
    assert ["default", "2", "0", "0", "0", "0", "0"] in [line.split() for line in text.stdout.splitlines()]
    assert worker.worker.id in text.stdout


# -- tasks -------------------------------------------------------------------------


def test_tasks_lists_discovered_tasks(cli: Any) -> None:
    result = cli("tasks", "clitasks")

    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["NAME", "QUEUE", "RUNNER", "RETRIES", "TIMEOUT", "LOCATION"]
    assert ["cli.add", "math", "inline", "0", "-", "clitasks:add"] in rows
    assert [row[0] for row in rows[1:]] == ["cli.add", "cli.shout", "cli.wait_for"]


@pytest.mark.parametrize("command", [["tasks"], ["run", "--burst"]])
def test_two_tasks_with_one_name_fail_start_up_naming_both(cli: Any, workdir: Path, command: list[str]) -> None:
    (workdir / "clidup.py").write_text(DUPLICATE)

    line = _one_error_line(cli(*command, "clitasks", "clidup"))

    assert "'cli.add'" in line
    assert "clitasks:add" in line and "clidup:plus" in line


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["enqueue", "cli.add", "--args", "[1, 2]"],
        ["queues"],
        ["events", "--timeout", "1"],
        ["run", "clitasks", "--burst"],
    ],
)
def test_unreachable_redis_is_one_line_naming_the_url(cli: Any, command: list[str]) -> None:
    result = cli(*command, "--redis-url", UNREACHABLE)

    line = _one_error_line(result)
    assert result.returncode == 2
    assert line.startswith(f"taskmesh: cannot connect to Redis at {UNREACHABLE}: ")


# -- events ----------------------------------------------------------------------


def test_events_prints_event_of_job_enqueued_before_timeout(cli: Any, taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "hey")

    text = cli("events", "--since", "0", "--timeout", "0.3")
    as_json = cli("events", "--since", "0", "--timeout", "0.3", "--json", "--queue", "default")

    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    assert [line.split()[2:] for line in text.stdout.splitlines()] == [["default", "enqueued", handle.id]]
    event = json.loads(as_json.stdout)
    assert (event["queue"], event["event"], event["job"]) == ("default", "enqueued", handle.id)


def test_events_follows_until_ctrl_c_and_exits_0(spawn: Any, taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "hey")
    follower = spawn("events", "--since", "0", "--json")

    first = json.loads(_read_line(follower, timeout=10))
    follower.send_signal(signal.SIGINT)

    assert (first["event"], first["job"]) == ("enqueued", handle.id)
    assert follower.wait(timeout=10) == 0


# -- cancel, pause, resume, limit ------------------------------------------------


def test_cancel_prints_the_state_and_unknown_jobs_are_one_line(cli: Any, taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "a")

    result = cli("cancel", handle.id)

    assert (result.returncode, result.stdout.strip()) == (0, "cancelled"), result.stderr
    assert handle.status().state is JobState.CANCELLED
    assert "not found" in _one_error_line(cli("cancel", "no-such-job"))


def test_pause_resume_and_limit_change_the_queue_for_every_worker(cli: Any, taskmesh_client: Client) -> None:
    assert cli("pause", "math").stdout.strip() == "math: paused"
    assert taskmesh_client.queue_settings("math").paused
    limited = cli("limit", "math", "--rate", "10/m", "--max-active", "3")
    capped = cli("limit", "math", "--task", "cli.add", "--max-active", "1")
    assert limited.returncode == 0 and capped.returncode == 0, limited.stderr + capped.stderr
    assert capped.stdout.splitlines() == [
        "math: paused; queue limit: 10/60s max_active=3",
        "  task cli.add: max_active=1",
    ]
    queues = cli("queues")
    assert "math: paused; limit 10/60s max_active=3; task cli.add: max_active=1" in queues.stdout
    assert json.loads(cli("queues", "--json").stdout)["settings"]["math"]["paused"] is True

    assert cli("resume", "math").stdout.strip() == "math: resumed"
    cleared = cli("limit", "math", "--clear")
    assert cleared.stdout.splitlines()[0] == "math: running; queue limit: none"
    assert "not both" in _one_error_line(cli("limit", "math", "--clear", "--rate", "1/s"))
    assert "invalid rate" in _one_error_line(cli("limit", "math", "--rate", "fast"))


# -- schedules -----------------------------------------------------------------------


def test_schedules_are_added_listed_paused_and_removed(cli: Any, taskmesh_client: Client) -> None:
    added = cli(
        "schedules", "add", "nightly", "cli.shout", "--cron", "0 3 * * *", "--tz", "Europe/Berlin", "--args", '["hi"]'
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("nightly: cron '0 3 * * *' (Europe/Berlin) -> cli.shout (queue default); next ")
    often = cli(
        "schedules",
        "add",
        "often",
        "cli.add",
        "--every",
        "30",
        "-q",
        "math",
        "--misfire",
        "catch_up",
        "--catch-up-max",
        "5",
        "--start",
        "2026-01-01T00:00:00+00:00",
    )
    assert often.returncode == 0, often.stderr

    listed = cli("schedules")
    lines = [line.split()[:5] for line in listed.stdout.splitlines()]
    assert lines[0] == ["NAME", "TASK", "QUEUE", "WHEN", "STATE"]
    assert lines[1][:3] == ["nightly", "cli.shout", "default"] and lines[2][:3] == ["often", "cli.add", "math"]
    assert cli("schedules", "pause", "often").stdout.strip() == "often: paused"
    data = json.loads(cli("schedules", "--json").stdout)
    assert [(d["name"], d["paused"], d["when"]) for d in data] == [
        ("nightly", False, "cron '0 3 * * *' (Europe/Berlin)"),
        ("often", True, "every 30s"),
    ]
    assert taskmesh_client.schedules()[0].entry.schedule.args == ["hi"]
    often_schedule = taskmesh_client.schedules()[1].entry.schedule
    assert (often_schedule.misfire, often_schedule.catch_up_max, often_schedule.start) == (
        "catch_up",
        5,
        datetime(2026, 1, 1, tzinfo=UTC),
    )

    assert cli("schedules", "remove", "often").stdout.strip() == "often: removed"
    assert "no schedule named 'often'" in _one_error_line(cli("schedules", "remove", "often"))
    assert "invalid cron expression '61 * * * *'" in _one_error_line(
        cli("schedules", "add", "bad", "cli.add", "--cron", "61 * * * *")
    )


# -- what reaches a terminal -------------------------------------------------------------

#: Text a terminal would act on (clear the screen, set the title, ring) or that reorders what follows it.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\u202eevil\u2066\u2028\x85"
RAW = ("\x1b", "\x07", "\u202e", "\u2066", "\u2028", "\x85")


def _no_raw_controls(text: str) -> None:
    assert not [char for char in RAW if char in text], repr(text)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:Zq7/Xw9@localhost:6379/0",
        "redis://:Zq7/Xw9@localhost/0",
        "redis://u:Zq7#Xw9@localhost/0",
        "unix://app:Zq7/Xw9@/tmp/taskmesh-none.sock",
        "unix://app:Zq7?Xw9@/tmp/taskmesh-none.sock",
    ],
)
def test_an_invalid_url_is_one_line_that_never_shows_the_password(cli: Any, url: str) -> None:
    line = _one_error_line(cli("queues", "--redis-url", url))

    assert "Zq7" not in line and "Xw9" not in line, line
    assert "***" in line and "percent-encode" in line


def test_status_escapes_what_a_job_chose_and_json_stays_ascii(
    cli: Any, taskmesh_client: Client, taskmesh_drain: Any
) -> None:
    returned = echo.enqueue(HOSTILE)
    bad_keyword = taskmesh_client.submit(Call(echo.name, ["x"], {HOSTILE: 1}))  # the task has no such parameter
    taskmesh_drain([echo], raise_errors=False)

    for handle in (returned, bad_keyword):
        text, as_json = cli("status", handle.id), cli("status", handle.id, "--json")
        assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
        _no_raw_controls(text.stdout)
        _no_raw_controls(as_json.stdout)
        assert "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in text.stdout
    assert json.loads(cli("status", returned.id, "--json").stdout)["result"] == HOSTILE


def test_events_escape_every_field_and_json_stays_ascii(cli: Any, taskmesh_client: Client) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "a")
    stream = taskmesh_client.keys("default").events
    taskmesh_client.redis.xadd(stream, {"event": "log", "job": handle.id, "message": HOSTILE})

    text = cli("events", "--since", "0", "--timeout", "0.3", "--queue", "default")
    as_json = cli("events", "--since", "0", "--timeout", "0.3", "--queue", "default", "--json")

    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    _no_raw_controls(text.stdout)
    _no_raw_controls(as_json.stdout)
    assert f"log  {handle.id}  message=\\x1b[2J" in text.stdout
    assert json.loads(as_json.stdout.splitlines()[-1])["message"] == HOSTILE


def test_events_show_the_id_of_an_event_whose_id_is_no_time_and_of_every_later_one(
    cli: Any, taskmesh_client: Client
) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "a")
    stream = taskmesh_client.keys("default").events
    far = "253402300800000-0"  # the first millisecond of the year 10000
    taskmesh_client.redis.xadd(stream, {"event": "log", "job": handle.id, "message": "far"}, id=far)
    later = taskmesh_client.redis.xadd(stream, {"event": "log", "job": handle.id, "message": "later"})

    text = cli("events", "--since", "0", "--timeout", "0.3", "--queue", "default")

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[2:] == ["default", "enqueued", handle.id], lines
    assert lines[1:] == [
        f"{far}  default  log  {handle.id}  message=far",
        f"{later}  default  log  {handle.id}  message=later",
    ]


def test_render_escapes_job_ids_names_and_data_read_from_a_stream() -> None:
    from taskmesh.cli.events import render

    line = render(Event("1700000000000-0", "default", "log\x1b[1m", "job\u202eid", {"k\x1b": "v\u2028w"}))

    _no_raw_controls(line)
    assert line.endswith("default  log\\x1b[1m  job\\u202eid  k\\x1b=v\\u2028w")


def test_format_characters_and_what_shows_as_nothing_are_written_as_escapes() -> None:
    from taskmesh.cli.common import escape

    hidden = "\u200b\u2060\ufeff\u00ad\U000e0041\U000e007f\u3164\u115f\ufe0f\u034f\u2800\ue000\U0010fffe\udcff"
    assert escape(f"a{hidden}b") == "a" + hidden.encode("unicode_escape").decode("ascii") + "b"
    assert escape("rapport-été 注文 🙂 \u00a0") == "rapport-été 注文 🙂 \u00a0"  # printable stays as it is


def test_schedules_remove_escapes_the_name_it_echoes(cli: Any, taskmesh_client: Client) -> None:
    name = "x\x1b[31m\u200b\u3164"
    taskmesh_client.redis.hset(f"{{{taskmesh_client.settings.prefix}}}:schedules", name, "{}")

    removed = cli("schedules", "remove", name)

    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "x\\x1b[31m\\u200b\\u3164: removed\n"
    assert taskmesh_client.redis.hlen(f"{{{taskmesh_client.settings.prefix}}}:schedules") == 0


def test_log_lines_of_the_command_line_are_escaped() -> None:
    from taskmesh.cli.common import EscapingFormatter

    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("taskmesh", logging.WARNING, __file__, 1, "job %s: %s", ("a\u202eb", HOSTILE), None)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record.exc_info = sys.exc_info()

    text = formatter.format(record)

    _no_raw_controls(text)
    assert text.startswith("WARNING job a\\u202eb: \\x1b[2J")
    assert "ValueError: \\x1b[2J" in text and "\nTraceback" in text  # a traceback keeps its lines


def test_limit_and_queues_show_an_unreadable_stored_limit_and_clear_removes_it(
    cli: Any, taskmesh_client: Client
) -> None:
    taskmesh_client.redis.hset(taskmesh_client.keys("math").meta, "limit:cli.bad", "not json")
    taskmesh_client.redis.sadd(f"{{{taskmesh_client.settings.prefix}}}:queues", "math")

    capped = cli("limit", "math", "--task", "cli.add", "--max-active", "1")
    queues = cli("queues")

    assert capped.returncode == 0 and queues.returncode == 0, capped.stderr + queues.stderr
    assert capped.stdout.splitlines()[1:] == [
        "  task cli.add: max_active=1",
        "  task cli.bad: invalid stored limit, ignored by workers: 'not json' is not a limit "
        "(Expecting value: line 1 column 1 (char 0)); remove it: taskmesh limit math --task cli.bad --clear",
    ]
    assert "math: task cli.add: max_active=1; task cli.bad: invalid limit (taskmesh limit math)" in queues.stdout
    assert json.loads(cli("queues", "--json").stdout)["settings"]["math"]["invalid_limits"].keys() == {"cli.bad"}

    cleared = cli("limit", "math", "--task", "cli.bad", "--clear")
    assert cleared.stdout.splitlines() == ["math: running; queue limit: none", "  task cli.add: max_active=1"]
    assert taskmesh_client.queue_settings("math").invalid == {}


def test_the_hint_to_remove_a_limit_under_a_name_with_controls_or_bytes_that_are_not_utf8_works_pasted(
    cli: Any, taskmesh_client: Client, workdir: Path, cli_env: dict[str, str]
) -> None:
    meta = taskmesh_client.keys("default").meta
    raw = connect.sync_client(taskmesh_client.settings.redis_url, decode_responses=False)
    try:
        raw.hset(meta, mapping={b"limit:t\x1b[31m": b"not json", b"limit:t\xff": b"not json", b"limit:-x": b"[]"})
        shown = cli("limit", "default")
        assert shown.returncode == 0, shown.stderr
        _no_raw_controls(shown.stdout)
        hints = [line.partition("; remove it: ")[2] for line in shown.stdout.splitlines()[1:]]
        assert hints == [
            "taskmesh limit default --task=-x --clear",
            "taskmesh limit default --task $'t\\x1b[31m' --clear",
            "taskmesh limit default --task $'t\\xff' --clear",
        ]
        for hint in hints:  # pasted into bash
            script = f'taskmesh() {{ "$PYTHON" -m taskmesh "$@"; }}\n{hint}\n'
            env = {**cli_env, "PYTHON": sys.executable}
            pasted = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, timeout=15)
            assert pasted.returncode == 0, (hint, pasted.stderr)
        assert raw.hgetall(meta) == {}
    finally:
        raw.close()


def test_queues_and_events_skip_a_name_in_the_set_of_queues_that_is_no_queue_name(
    cli: Any, taskmesh_client: Client
) -> None:
    handle = taskmesh_client.enqueue("cli.shout", "a")
    taskmesh_client.redis.sadd(f"{{{taskmesh_client.settings.prefix}}}:queues", "bad name" + HOSTILE)

    queues = cli("queues")
    events = cli("events", "--since", "0", "--timeout", "0.3")

    assert queues.returncode == 0 and events.returncode == 0, queues.stderr + events.stderr
    assert "default" in queues.stdout and handle.id in events.stdout
    for result in (queues, events):
        _no_raw_controls(result.stdout + result.stderr)
        assert "taskmesh: ignoring 'bad name\\x1b[2J" in result.stderr


# -- one configuration for producers and workers ----------------------------------


@pytest.fixture
def project(workdir: Path, taskmesh_redis_url: str, taskmesh_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``workdir`` as the current directory of a project whose pyproject.toml names the test Redis and the
    test's prefix, with no ``TASKMESH_*`` variable set."""
    (workdir / "pyproject.toml").write_text(
        f'[project]\nname = "app"\n\n[tool.taskmesh]\nredis-url = "{taskmesh_redis_url}"\n'
        f'prefix = "{taskmesh_prefix}"\n'
    )
    for name in [name for name in os.environ if name.startswith("TASKMESH_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(workdir)
    return workdir


def test_a_producer_and_a_worker_started_in_one_project_use_its_redis_and_prefix(
    project: Path, taskmesh_client: Client
) -> None:
    producer = Client()
    try:
        assert (producer.settings.redis_url, producer.settings.prefix) == (
            taskmesh_client.settings.redis_url,
            taskmesh_client.settings.prefix,
        )
        handle = producer.enqueue("cli.shout", "same")
        worker = subprocess.run(
            [sys.executable, "-m", "taskmesh", "run", "clitasks", "--burst"],
            cwd=project,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert worker.returncode == 0, worker.stderr
        assert handle.result(timeout=5) == "SAME "
    finally:
        producer.close()


# -- config ------------------------------------------------------------------------

PROJECT = """\
[tool.taskmesh]
concurrency = 4
queues = ["from-file"]

[tool.taskmesh.webhook]
url = "https://al1ce:pw0rd@hooks.example.com/T0KEN?sig=qu3ry"
retries = 7

[tool.taskmesh.nobody]
anything = 1
"""


@pytest.fixture
def config(workdir: Path, cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``taskmesh config ARGS...`` in a sub-directory of a project whose pyproject.toml is ``PROJECT``."""
    (workdir / "pyproject.toml").write_text(PROJECT)
    below = workdir / "src" / "app"
    below.mkdir(parents=True)

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskmesh", "config", *args],
            cwd=below,
            env={**cli_env, **env},
            capture_output=True,
            text=True,
            timeout=15,
        )

    return run


SECRETS = ("s3cr3t", "al1ce", "pw0rd", "T0KEN", "qu3ry", "hm4c")


def test_config_shows_every_value_and_where_it_came_from_with_secrets_masked(
    config: Any, workdir: Path, taskmesh_prefix: str
) -> None:
    result = config("--redis-url", "redis://app:s3cr3t@127.0.0.1:1/0", TASKMESH_WEBHOOK_SECRET="hm4ckey")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    path = str(workdir / "pyproject.toml")
    assert lines[0] == f"pyproject: {path}"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) >= {"redis_url", "prefix", "concurrency", "lease_seconds", "webhook.url", "webhook.secret"}
    assert rows["redis_url"] == ["redis://app:***@127.0.0.1:1/0", "--redis-url"]
    assert rows["prefix"] == [taskmesh_prefix, "TASKMESH_PREFIX"]
    assert rows["concurrency"] == ["4", path]
    assert rows["queues"] == ["from-file", path]
    assert rows["lease_seconds"] == ["6.0", "default"]
    assert rows["webhook.url"] == ["https://***@hooks.example.com/***?***", path]
    assert rows["webhook.secret"] == ["***", "TASKMESH_WEBHOOK_SECRET"]
    assert rows["webhook.retries"] == ["7", path]
    assert rows["webhook.timeout"] == ["5.0", "default"]
    assert not [secret for secret in SECRETS if secret in result.stdout + result.stderr]
    assert result.stderr == (
        f"taskmesh: ignoring [tool.taskmesh.nobody] of {path}: no plugin loaded here declares settings named nobody\n"
    )


def test_config_json_has_each_value_its_source_and_its_variable(config: Any, workdir: Path) -> None:
    result = config("--json", "--prefix", "cli", TASKMESH_QUEUES="a,b", TASKMESH_WEBHOOK_SECRET="hm4ckey")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    path = str(workdir / "pyproject.toml")
    assert shown["pyproject"] == path
    core, webhook = shown["settings"], shown["plugins"]["webhook"]
    assert core["prefix"] == {"value": "cli", "source": "flag", "origin": "--prefix", "env": "TASKMESH_PREFIX"}
    assert core["queues"] == {
        "value": ["a", "b"],
        "source": "env",
        "origin": "TASKMESH_QUEUES",
        "env": "TASKMESH_QUEUES",
    }
    assert core["concurrency"] == {"value": 4, "source": "pyproject", "origin": path, "env": "TASKMESH_CONCURRENCY"}
    assert core["scheduler"] == {"value": True, "source": "default", "origin": "default", "env": "TASKMESH_SCHEDULER"}
    assert webhook["secret"] == {
        "value": "***",
        "source": "env",
        "origin": "TASKMESH_WEBHOOK_SECRET",
        "env": "TASKMESH_WEBHOOK_SECRET",
    }
    assert webhook["url"]["value"] == "https://***@hooks.example.com/***?***"
    assert shown["plugins"]["prometheus"]["port"]["value"] == 9808
    assert not [secret for secret in SECRETS if secret in result.stdout]


def test_config_masks_the_password_of_a_redis_url_from_the_environment_and_of_any_url_valued_setting(
    config: Any,
) -> None:
    url = "redis+sentinel://:s3cr3t@h1:26379,h2/mymaster?sentinel_password=hm4c"
    result = config("--json", TASKMESH_REDIS_URL=url, TASKMESH_PROMETHEUS_ADDR="http://al1ce:pw0rd@x")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["settings"]["redis_url"]["value"] == "redis+sentinel://:***@h1:26379,h2/mymaster?sentinel_password=***"
    assert shown["plugins"]["prometheus"]["addr"]["value"] == "http://al1ce:***@x"
    assert not [secret for secret in ("s3cr3t", "hm4c", "pw0rd") if secret in result.stdout]


def test_config_refuses_an_unknown_key_in_a_plugin_table_in_one_line_naming_it(config: Any, workdir: Path) -> None:
    (workdir / "pyproject.toml").write_text("[tool.taskmesh.webhook]\nretires = 2\n")

    line = _one_error_line(config())

    assert line == (
        f"taskmesh: {workdir / 'pyproject.toml'}: unknown setting(s) in [tool.taskmesh.webhook]: retires; "
        "the webhook plugin's settings are: url, secret, retries, timeout"
    )


def test_config_without_a_pyproject_says_where_it_looked(cli: Any, workdir: Path) -> None:
    (workdir / ".git").mkdir()  # the search ends at the repository's root

    result = cli("config")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"pyproject: none (no pyproject.toml with [tool.taskmesh] in {workdir} or above it)"
    )


def test_run_leases_only_the_queues_the_nearest_pyproject_names(
    cli: Any, workdir: Path, taskmesh_client: Client
) -> None:
    (workdir / "pyproject.toml").write_text('[tool.taskmesh]\nqueues = ["math"]\n')
    added = taskmesh_client.submit(Call("cli.add", (2, 3), queue="math"))
    shouted = taskmesh_client.enqueue("cli.shout", "no")

    result = cli("run", "clitasks", "--burst")

    assert result.returncode == 0, result.stderr
    assert added.result(timeout=5) == 5
    assert shouted.status().state == JobState.WAITING
    assert "queues math;" in next(line for line in result.stderr.splitlines() if "starting" in line)
