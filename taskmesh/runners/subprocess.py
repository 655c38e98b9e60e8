"""The ``subprocess`` runner: every attempt runs in a fresh child process, killable on timeout or cancel.

A fresh process per attempt, not a pool: nothing a task does to its process (memory it leaks or
fragments, globals it changes, threads it leaves, a crash) reaches the worker or the next attempt, and
stopping an attempt is simply killing its process group. Starting a Python process that imports the
app costs a tenth of a second or more, so the children are forked from a fork server: a process
started once per runner (when the worker is built) that holds the worker's ``sys.path``, has imported
taskmesh and imports each task module once, before its first fork. An attempt then costs a ``fork``
(about a millisecond or two; see README *Performance*). The fork server is a plain process of our own,
not ``multiprocessing``'s: requests and results are JSON (no pickle), it lives and dies with this
runner, and the modules it holds grow as tasks need them. See ``_child.py`` for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, RemoteError, Retry, SlowDown, TaskCrashed, Unrecoverable
from ..plugins import hookimpl
from ._child import TERM_GRACE, signal_group

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task
    from .base import RunnerRegistry

#: Started with the worker's interpreter: take its sys.path before anything is imported, then serve.
BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from taskmesh.runners._child import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
)
log = logging.getLogger("taskmesh.runners.subprocess")
#: How long a stopped attempt may take to be reported gone after SIGKILL before the worker moves on.
KILL_WAIT = 5.0


@dataclass(slots=True)
class _Run:
    """One attempt in a child process, as the worker sees it."""

    job: Job
    outcome: asyncio.Future[Any]
    pid: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class SubprocessRunner:
    """Runs each attempt in a child forked from this runner's fork server (see the module docstring).

    The child's ``job.progress()``/``job.log()`` reach the worker's job under the run's fencing token;
    its result and errors come back as JSON. A cancelled ``run`` (timeout, cancel request, hand-back)
    sends SIGTERM to the child's process group, then SIGKILL after ``TERM_GRACE``. A child that dies
    without an outcome fails the attempt with :class:`TaskCrashed`.
    """

    def __init__(self, settings: Settings) -> None:
        self._server: _ForkServer | None = _ForkServer()  # started now, so the first job does not wait for it
        self._closed = False

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if self._closed:
            raise RuntimeError("the subprocess runner is closed")
        if self._server is None or self._server.lost:
            if self._server is not None:
                await self._server.close()
            self._server = _ForkServer()
        return await self._server.run(task, job, args[1:] if task.takes_job else args, kwargs)

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            await self._server.close()
            self._server = None


class _ForkServer:
    """The fork server process and the worker's end of its pipes."""

    def __init__(self) -> None:
        channel_r, channel_w = os.pipe()
        alive_r, alive_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", BOOT, json.dumps(sys.path), str(channel_w), str(alive_w)],
                stdin=subprocess.PIPE,
                pass_fds=(channel_w, alive_w),
                start_new_session=True,  # neither Ctrl-C nor the worker's process group signals reach it
            )
        except BaseException:
            os.close(channel_r)
            os.close(alive_r)
            raise
        finally:
            os.close(channel_w)
            os.close(alive_w)
        self._channel = channel_r
        self._alive = alive_r
        self._ids = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._abandoned: set[int] = set()  # runs stopped before their child was reported started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attaching: asyncio.Future[None] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._channel_pipe: asyncio.ReadTransport | None = None
        self._reading: asyncio.Task[None] | None = None
        self._gone = asyncio.Event()

    @property
    def lost(self) -> bool:
        """The fork server exited (see ``_on_server_gone``)."""
        return self._gone.is_set()

    async def _attach(self) -> None:
        """Connect the pipes to the running loop (the loop the worker runs on; the server starts before it)."""
        loop = self._loop = asyncio.get_running_loop()
        assert self._process.stdin is not None
        self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, self._process.stdin)
        reader = asyncio.StreamReader(limit=1 << 16)
        self._channel_pipe, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._channel, "rb", buffering=0)
        )
        self._reading = asyncio.create_task(self._read(reader), name="taskmesh-subprocess-channel")
        loop.add_reader(self._alive, self._on_server_gone)

    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if self._attaching is None:
            self._attaching = asyncio.ensure_future(self._attach())
        await asyncio.shield(self._attaching)  # the first runs all wait for it; a cancelled one does not stop it
        assert self._stdin is not None
        module = module_of(task)
        number = next(self._ids)
        run = _Run(job, asyncio.get_running_loop().create_future())
        self._runs[number] = run
        request = {
            "id": number,
            "module": module,
            "task": task.name,
            "args": list(args),
            "kwargs": dict(kwargs),
            "job": {"job_id": job.id, "queue": job.queue, "task": job.task, "attempt": job.attempt, "token": job.token},
        }
        try:
            self._stdin.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            try:
                return await run.outcome
            except asyncio.CancelledError:
                await self._stop(number, run)
                raise
        finally:
            del self._runs[number]

    async def _stop(self, number: int, run: _Run) -> None:
        """The attempt is being stopped: SIGTERM its process group, SIGKILL it after the grace."""
        try:
            if run.pid is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.started.wait(), TERM_GRACE)
            if run.pid is None:  # not forked yet: the server kills it when it reports it started
                self._abandoned.add(number)
                return
            signal_group(run.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(run.exited.wait(), TERM_GRACE)
            except TimeoutError:
                signal_group(run.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.exited.wait(), KILL_WAIT)
        except BaseException:  # stopped again meanwhile: never leave the child running
            if run.pid is not None:
                signal_group(run.pid, signal.SIGKILL)
            raise

    async def _read(self, reader: asyncio.StreamReader) -> None:
        partial: dict[int, bytearray] = {}
        while header := await reader.readline():
            number_text, flag, size = header.split()
            body = await reader.readexactly(int(size))
            number = int(number_text)
            if flag == b"m":
                partial.setdefault(number, bytearray()).extend(body)
                continue
            if flag == b"e":
                body = bytes(partial.pop(number, b"")) + body
            message = json.loads(body)
            if message["k"] == "x":
                partial.pop(number, None)  # a child killed in the middle of a message
            try:
                self._deliver(number, message)
            except Exception:
                log.exception("subprocess runner: cannot act on %r for run %d", message.get("k"), number)

    def _deliver(self, number: int, message: dict[str, Any]) -> None:
        kind = message["k"]
        run = self._runs.get(number)
        if run is None:
            if kind == "s" and number in self._abandoned:
                signal_group(message["pid"], signal.SIGKILL)
            if kind == "x":
                self._abandoned.discard(number)
            return
        if kind == "s":
            run.pid = message["pid"]
            run.started.set()
        elif kind in ("p", "l"):
            with contextlib.suppress(Exception):  # e.g. LeaseLost: the run's reports are refused anyway
                if kind == "p":
                    run.job.progress(json.loads(message["v"]))
                else:
                    run.job.log(message["v"])
        elif kind == "r":
            _settle(run.outcome, result=json.loads(message["v"]))
        elif kind == "e":
            _settle(run.outcome, error=rebuild(message))
        elif kind == "x":
            run.exited.set()
            _settle(run.outcome, error=TaskCrashed(exit_reason(message["code"])))

    def _on_server_gone(self) -> None:
        """The fork server exited (killed, or out of memory): fail what it was running; the next job starts another."""
        assert self._loop is not None
        self._loop.remove_reader(self._alive)
        self._gone.set()
        reason = "the subprocess runner's fork server exited"
        if self._runs:
            log.warning("%s (pid %d) with %d job(s) running; they fail", reason, self._process.pid, len(self._runs))
        for run in self._runs.values():
            if run.pid is not None:
                signal_group(run.pid, signal.SIGKILL)  # nobody could report its end any more
            run.exited.set()
            _settle(run.outcome, error=TaskCrashed(reason))

    async def close(self) -> None:
        """Close the server's stdin: it ends any child still running and exits."""
        if self._stdin is not None:
            self._stdin.close()
        elif self._process.stdin is not None:
            self._process.stdin.close()
        if self._loop is not None and not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), TERM_GRACE + KILL_WAIT)
        if self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._process.wait, TERM_GRACE + KILL_WAIT)
        if self._process.poll() is None:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)
        if self._loop is not None:
            self._loop.remove_reader(self._alive)
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._channel_pipe is not None:
            self._channel_pipe.close()
        else:
            os.close(self._channel)
        os.close(self._alive)


def _settle(outcome: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if outcome.done():  # settled already, or its awaiter was cancelled
        return
    if error is None:
        outcome.set_result(result)
    else:
        outcome.set_exception(error)


def rebuild(error: dict[str, Any]) -> BaseException:
    """The child's error, as the worker acts on it; the job records the child's type, message and traceback."""
    remote = RemoteError(error["type"], error["message"], error.get("traceback", ""))
    kind, message = error.get("kind"), error["message"]
    exc: BaseException
    if kind == "slowdown":
        exc = SlowDown(error["delay"], message)
    elif kind == "retry":
        exc = Retry(error["delay"], message)
    elif kind == "unrecoverable":
        exc = Unrecoverable(message)
    elif kind == "cancelled":
        exc = Cancelled(message)
    else:
        return remote
    exc.__cause__ = remote
    return exc


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if code == -signal.SIGKILL else ""
        return f"the task's process was killed by {name}{hint}"
    return f"the task's process exited with code {code} without a result"


_modules: dict[int, tuple[Task[Any, Any], str]] = {}


def module_of(task: Task[Any, Any]) -> str:
    """The module that holds ``task`` at its top level, found in this process: the child imports it from there.

    The job names only a task; the module is the worker's own knowledge, never the job's.
    """
    known = _modules.get(id(task))
    if known is not None and known[0] is task:
        return known[1]
    for name in [task.fn.__module__, *sys.modules]:
        module = sys.modules.get(name)
        if name != "__main__" and module is not None and any(v is task for v in list(vars(module).values())):
            _modules[id(task)] = (task, name)
            return name
    raise Unrecoverable(
        f"task {task.name} is not defined at the top level of an importable module (it is in __main__ or inside a "
        "function); the subprocess runner imports the task in a child process, so move it to a module"
    )


@hookimpl
def taskmesh_register_runners(register: RunnerRegistry) -> None:
    register.add("subprocess", SubprocessRunner)
