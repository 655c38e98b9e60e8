"""The subprocess runner's fork server and the child process each attempt runs in.

The worker starts ``python -c BOOT SYS_PATH REPORTS`` (see ``subprocess.py``) with a minimal environment
(:func:`server_environment`): that process takes the worker's ``sys.path``, imports taskmesh, then reads
requests on its stdin (a socket: an 8-byte length, then one JSON request, read exactly, so no later
request sits in a buffer a child inherits) and forks a fresh child per request.

Each attempt gets a channel of its own: a socket pair made for it just before its fork. The child keeps
one end and closes everything else of the runner's (stdin, the report socket, the worker's end); the fork
server closes the child's end after the fork and hands the worker's end to the worker with its ``s``
(started) report, then closes that too. So no other child ever holds it, and being sockets, neither end
can be reopened through ``/proc/PID/fd``. On its channel the child writes messages as frames
``b"RUN SIZE\\n" + JSON`` (``p`` progress, ``l`` log, ``r`` result, ``e`` error); the worker checks each
frame against the run the channel belongs to (see ``subprocess.py``).

``REPORTS`` is a ``SOCK_SEQPACKET`` socket only the fork server holds: one JSON message per packet,
``s`` started (with the pid, and the worker's end of the channel attached), ``x`` exited (with the exit
code, after the child is reaped), ``e`` the child could not be started. The worker sees it close when
the fork server ends. When its stdin closes (the worker stopped or died), the server ends the children
still running.

A child puts itself in its own process group, trims its environment to the minimal one plus the names
its task asked for, finds the task by its registered name in the module the worker named, runs it and
exits with ``os._exit``. On Linux the fork server and each child are child subreapers: a process an
attempt started that leaves its process group or session (``setsid``, ``process_group=0``) is still
re-parented to the attempt's process while it runs, and to the fork server after it ends, which kills
every process re-parented to it (:func:`kill_strays`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any, NoReturn

from ..client import CHILD_MARKER
from ..errors import Cancelled, Retry, SlowDown, Unrecoverable
from ..job import Job
from ..task import Task
from .base import BaseRunner
from .outcome import error_json, result_json

#: Seconds a child gets between SIGTERM and SIGKILL when its attempt is stopped.
TERM_GRACE = 1.0
#: The bytes of the length before each request on the fork server's stdin.
REQUEST_HEADER = 8
#: Environment variables every task's process gets: what a process needs to run, to find its imports and
#: shared libraries, and to verify TLS certificates; which hosts bypass a proxy. Not the proxies themselves
#: (``HTTPS_PROXY`` and the like): a proxy URL can carry a password, so a task asks for it.
BASE_ENVIRONMENT = frozenset(
    {
        "HOME", "LANG", "LANGUAGE", "LOGNAME", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
        "PYTHONIOENCODING", "PYTHONPATH", "PYTHONUTF8", "PYTHONWARNINGS", "TMPDIR", "TZ", "USER", "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "NO_PROXY", "no_proxy",
    }
)  # fmt: skip
#: ... and every variable whose name starts with one of these: the locale's ``LC_*``, and GPU device
#: selection (``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``, ...).
BASE_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")
PR_SET_CHILD_SUBREAPER = 36


def in_base_environment(name: str) -> bool:
    return name in BASE_ENVIRONMENT or name.startswith(BASE_PREFIXES) or name == CHILD_MARKER


class Channel:
    """A child's end of its attempt's channel: each message one frame, written whole (threads take turns)."""

    def __init__(self, sock: socket.socket, run: int) -> None:
        self._sock = sock  # kept referenced: its finalizer must not close the fd while the child runs
        self._fd = sock.fileno()
        self._run = run
        self._lock = threading.Lock()

    def send(self, message: Mapping[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        frame = memoryview(b"%d %d\n" % (self._run, len(body)) + body)
        with self._lock:
            while frame:
                frame = frame[os.write(self._fd, frame) :]


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group ``pid`` leads (a child and whatever it started); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def become_subreaper() -> None:
    """Orphaned descendants re-parent to this process rather than to init, so they can be found (Linux only)."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once in the fork server (its children inherit it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def own_children() -> list[int]:
    """The pids whose parent is this (single-threaded) process."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as file:
            return [int(child) for child in file.read().split()]
    except OSError:  # no /proc, or a kernel without CONFIG_PROC_CHILDREN: look at every process
        return _children_by_scan(pid)


def _children_by_scan(parent: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat", "rb") as file:
                if int(file.read().rpartition(b")")[2].split()[1]) == parent:
                    found.append(int(entry))
    return found


def kill_strays(known: Iterable[int]) -> None:
    """SIGKILL every child of this process that is not a running attempt: only processes an ended attempt
    left behind are re-parented here. Their own children are re-parented here as they die, and are
    killed in turn when their SIGCHLD comes."""
    running = set(known)
    for pid in own_children():
        if pid not in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def server_environment(environ: Mapping[str, str], wanted: Iterable[str]) -> dict[str, str]:
    """The fork server's environment: the base one, plus the variables the runner's tasks ask for (so that
    their modules see them when the fork server imports them)."""
    wanted = set(wanted)
    kept = {name: value for name, value in environ.items() if in_base_environment(name) or name in wanted}
    return {**kept, CHILD_MARKER: "1"}


class Children:
    """The fork server's running attempts (pid -> run id), and the SIGCHLD handler that reaps them.

    Never re-entered (a SIGCHLD during a sweep makes the sweep go round again), so a pid it lists is not
    reaped, and free for reuse, before it is signalled.
    """

    def __init__(self, report: Callable[[Mapping[str, Any]], None]) -> None:
        self.runs: dict[int, int] = {}
        self._report = report
        self._busy = False
        self._again = False

    def on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self.sweep()

    def sweep(self) -> None:
        """Reap what exited, report the attempts among them, and SIGKILL what ended attempts left behind."""
        if self._busy:
            self._again = True
            return
        self._busy = self._again = True
        try:
            while self._again:
                self._again = False
                self._reap()
                kill_strays(self.runs)  # whatever an ended attempt started elsewhere, re-parented here
        finally:
            self._busy = False

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.runs.pop(pid, None)
            if run is not None:
                signal_group(pid, signal.SIGKILL)  # whatever the attempt left in its group ends with it
                self._report({"k": "x", "id": run, "code": os.waitstatus_to_exitcode(status)})

    def end(self) -> None:
        """The worker is gone: SIGTERM every child's group, SIGKILL what is left after the grace, then wait
        (boundedly) for what they left behind to be killed in turn."""
        for pid in list(self.runs):
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while self.runs and time.monotonic() < deadline:
            time.sleep(0.01)  # the SIGCHLD handler reaps them meanwhile
        for pid in list(self.runs):
            signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + TERM_GRACE
        while own_children() and time.monotonic() < deadline:
            self.sweep()
            time.sleep(0.01)


def serve(reports_fd: int) -> None:
    """The fork server's loop: one child per request on stdin, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle: it stops the runs
    become_subreaper()
    reports = socket.socket(fileno=reports_fd)

    def report(message: Mapping[str, Any], fd: int | None = None) -> None:
        data = json.dumps(message).encode()
        with contextlib.suppress(OSError):  # the worker is gone: nobody is listening
            if fd is None:
                reports.send(data)
            else:
                socket.send_fds(reports, [data], [fd])

    children = Children(report)
    signal.signal(signal.SIGCHLD, children.on_sigchld)
    while (request := read_request(0)) is not None:
        import_modules(request["modules"])
        if "id" in request:  # else the worker only asks for its tasks' modules, at start
            _fork(request, children, reports, report)
    children.end()


def import_modules(names: Iterable[str]) -> None:
    """Import the task modules this server has not imported yet, so that the children have them already.

    A module that fails to import, even by ``sys.exit()`` (a module that stops without its configuration),
    is imported again by each of its jobs' children, which reports the error as that job's."""
    for name in names:
        if name not in sys.modules:
            with contextlib.suppress(BaseException):  # SystemExit and KeyboardInterrupt too: never end the server
                importlib.import_module(name)
                gc.freeze()  # keep what was imported out of the children's copy-on-write pages


def _fork(request: dict[str, Any], children: Children, reports: socket.socket, report: Callable[..., None]) -> None:
    """Fork the child of one attempt, with a channel of its own; report it started, with the worker's end."""
    run = request["id"]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # reap only once the child is on the books
    try:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            pid = os.fork()
            if pid == 0:
                _child(request, theirs, (ours, reports))
            with contextlib.suppress(OSError):  # the child does it too; whichever is first makes the group
                os.setpgid(pid, pid)
            children.runs[pid] = run
            theirs.close()
            report({"k": "s", "id": run, "pid": pid}, ours.fileno())
    except OSError as exc:
        report({"k": "e", "id": run, **json.loads(error_json(exc, tb=False))})
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def read_request(fd: int) -> dict[str, Any] | None:
    """The next request, read exactly (nothing of the next one); None when the worker closed the socket."""
    header = _read_exactly(fd, REQUEST_HEADER)
    body = None if header is None else _read_exactly(fd, int.from_bytes(header, "big"))
    return None if body is None else dict(json.loads(body))


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _child(request: dict[str, Any], channel: socket.socket, runners: Iterable[socket.socket]) -> NoReturn:
    code = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for sock in runners:  # the worker's end of this channel, and the fork server's reports
            sock.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the fork server's requests
        os.close(devnull)
        become_subreaper()
        _trim_environment(request.get("env", {}))
        writer = Channel(channel, request["id"])
        writer.send(_attempt(request, writer))
    except BaseException:
        code = 70  # the outcome could not be sent: the worker reports the exit code
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _trim_environment(wanted: Mapping[str, str]) -> None:
    """The base environment plus the variables the task asked for (their values sent by the worker)."""
    for name in [name for name in os.environ if name not in wanted and not in_base_environment(name)]:
        del os.environ[name]
    os.environ.update(wanted)


def _attempt(request: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Run the task; return the message that carries its outcome."""

    def report(kind: str, job_id: str, value: str) -> None:
        channel.send({"k": kind, "v": value})

    try:
        job = Job(report=report, **request["job"])
        task = find_task(request["modules"][0], request["task"])
        args = BaseRunner.call_args(task, job, request["args"])
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
