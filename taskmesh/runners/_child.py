"""The subprocess runner's fork server and the child process each attempt runs in.

The worker starts ``python -c BOOT SYS_PATH CHANNEL ALIVE`` (see ``subprocess.py``): that process
takes the worker's ``sys.path``, imports taskmesh, then reads one JSON request a line on stdin and
forks a fresh child per request. A child puts itself in its own process group, finds the task by its
registered name in the module the worker named, runs it and exits with ``os._exit``.

Everything the worker hears comes over one pipe (``CHANNEL``) as frames ``b"RUN FLAG SIZE\\n" + body``,
each written with one ``os.write`` of at most ``PIPE_BUF`` bytes, so frames from concurrent children
never interleave. FLAG ``m``: a child's message continues in the next frame of this run; ``e``: it ends
here; ``z``: a whole message from the fork server (``s`` started, with the pid; ``x`` exited, with the
exit code; ``e`` the child could not be started). A child's messages (``p`` progress, ``l`` log, ``r``
result JSON, ``e`` error) all precede the fork server's ``x`` for it, since ``x`` is written after the
child has been reaped. The fork server alone holds ``ALIVE``: the worker sees it close when the server
ends. When its stdin closes (the worker stopped or died), the server ends the children still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any, NoReturn

from ..dispatch.outcome import error_json, result_json
from ..errors import Cancelled, Retry, SlowDown, Unrecoverable
from ..job import Job
from ..task import Task

#: Seconds a child gets between SIGTERM and SIGKILL when its attempt is stopped.
TERM_GRACE = 1.0
#: The bytes of a frame body, leaving room for the header within one atomic pipe write.
CHUNK = select.PIPE_BUF - 64


def write_frame(fd: int, run: int, flag: bytes, body: bytes) -> None:
    os.write(fd, b"%d %s %d\n" % (run, flag, len(body)) + body)


def send(fd: int, run: int, message: Mapping[str, Any]) -> None:
    """A child's message, split into frames that each fit one atomic pipe write."""
    body = json.dumps(message, separators=(",", ":")).encode()
    for start in range(0, len(body), CHUNK):
        last = start + CHUNK >= len(body)
        write_frame(fd, run, b"e" if last else b"m", body[start : start + CHUNK])


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group ``pid`` leads (a child and whatever it started); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def serve(channel: int, alive: int) -> None:
    """The fork server's loop: one child per request line on stdin, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle: it stops the runs
    children: dict[int, int] = {}  # pid -> run id

    def report(run: int, message: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: nobody is listening
            write_frame(channel, run, b"z", json.dumps(message).encode())

    def reap(signum: int, frame: FrameType | None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            signal_group(pid, signal.SIGKILL)  # whatever the attempt left behind ends with it
            run = children.pop(pid, None)
            if run is not None:
                report(run, {"k": "x", "code": os.waitstatus_to_exitcode(status)})

    signal.signal(signal.SIGCHLD, reap)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        run = request["id"]
        with contextlib.suppress(Exception):  # a module that fails to import is imported (and reported) by the child
            if request["module"] not in sys.modules:
                importlib.import_module(request["module"])
                gc.freeze()  # keep what was imported out of the children's copy-on-write pages
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # reap only once the child is on the books
        try:
            pid = os.fork()
            if pid == 0:
                _child(request, channel, alive)
            with contextlib.suppress(OSError):  # the child does it too; whichever is first makes the group
                os.setpgid(pid, pid)
            children[pid] = run
            report(run, {"k": "s", "pid": pid})
        except OSError as exc:
            report(run, {"k": "e", **json.loads(error_json(exc, tb=False))})
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    _end_children(children)


def _end_children(children: dict[int, int]) -> None:
    """The worker is gone: SIGTERM every child's group, SIGKILL what is left after the grace."""
    for pid in list(children):
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    while children and time.monotonic() < deadline:
        time.sleep(0.01)  # the SIGCHLD handler reaps them meanwhile
    for pid in list(children):
        signal_group(pid, signal.SIGKILL)


def _child(request: dict[str, Any], channel: int, alive: int) -> NoReturn:
    code = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.close(alive)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        send(channel, request["id"], _attempt(request, channel))
    except BaseException:
        code = 70  # the outcome could not be sent: the worker reports the exit code
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _attempt(request: dict[str, Any], channel: int) -> dict[str, Any]:
    """Run the task; return the message that carries its outcome."""
    run = request["id"]

    def report(kind: str, job_id: str, value: str) -> None:
        send(channel, run, {"k": kind, "v": value})

    try:
        job = Job(report=report, **request["job"])
        task = find_task(request["module"], request["task"])
        args = [job, *request["args"]] if task.takes_job else request["args"]
        if task.is_async:
            result = asyncio.run(task.fn(*args, **request["kwargs"]))
        else:
            result = task.fn(*args, **request["kwargs"])
        return {"k": "r", "v": result_json(result)}
    except BaseException as exc:
        return {"k": "e", **describe(exc)}


def find_task(module_name: str, name: str) -> Task[Any, Any]:
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, Task) and value.name == name:
            return value
    raise Unrecoverable(f"no task named {name!r} at the top level of module {module_name!r} in the task's process")


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON: type, message, traceback, and what the worker must rebuild to act on it."""
    error: dict[str, Any] = json.loads(error_json(exc))
    if isinstance(exc, SlowDown):
        error.update(kind="slowdown", delay=exc.delay)
    elif isinstance(exc, Retry):
        error.update(kind="retry", delay=exc.delay)
    elif isinstance(exc, Unrecoverable):
        error.update(kind="unrecoverable")
    elif isinstance(exc, Cancelled):
        error.update(kind="cancelled")
    return error
