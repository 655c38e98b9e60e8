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
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from ..errors import Cancelled, ConfigurationError, RemoteError, Retry, SlowDown, TaskCrashed, Unrecoverable
from ..plugins import hookimpl
from ._child import REQUEST_HEADER, TERM_GRACE, server_environment, signal_group
from .base import BaseRunner

if TYPE_CHECKING:
    from ..job import Job
    from ..settings import Settings
    from ..task import Task
    from .base import RunnerRegistry

#: Started with the worker's interpreter: take its sys.path before anything is imported, then serve.
BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from taskmesh.runners._child import serve; serve(int(sys.argv[2]))"
)
log = logging.getLogger("taskmesh.runners.subprocess")
#: How long a stopped attempt may take to be reported gone after SIGKILL before the worker moves on.
KILL_WAIT = 5.0
#: Seconds a child has to exit once its outcome is in (it exits at once unless something keeps it going).
OUTCOME_GRACE = 1.0
#: The largest message a task's process may send (a result, an error, a progress report or a log line).
MAX_MESSAGE = 64 << 20
#: Reads of 64 KiB that drain an exited child's channel at most (a socket buffer holds far less).
DRAIN_READS = 64
#: A frame header ``b"RUN SIZE\n"`` is at most this long.
MAX_HEADER = 48
_RECEIVE_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class ChannelBroken(Exception):
    """What the worker read on an attempt's channel is not a frame of that attempt."""


@dataclass(slots=True)
class _Run:
    """One attempt in a child process, as the worker sees it."""

    number: int
    job: Job
    outcome: asyncio.Future[Any]
    pid: int | None = None
    channel: int | None = None  # the worker's end of the attempt's channel, once the child is started
    unread: bytearray = field(default_factory=bytearray)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    kill: asyncio.TimerHandle | None = None  # SIGKILLs a child still running ``OUTCOME_GRACE`` after its outcome


class SubprocessRunner(BaseRunner):
    """Runs each attempt in a child forked from this runner's fork server (see the module docstring).

    The child's ``job.progress()``/``job.log()`` reach the worker's job under the run's fencing token;
    its result and errors come back as JSON. A cancelled ``run`` (timeout, cancel request, hand-back)
    sends SIGTERM to the child's process group, then SIGKILL after ``TERM_GRACE``. Once the outcome is in,
    ``run`` returns and the child has ``OUTCOME_GRACE`` to exit before its group is SIGKILLed. A child that dies
    without an outcome, or whose channel to the worker breaks, fails the attempt with :class:`TaskCrashed`.

    The child's environment is the base one (:data:`~taskmesh.runners._child.BASE_ENVIRONMENT`) plus the
    variables its task names in ``runner_options={"env": [...]}``; see :func:`wanted_environment`.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._server: _ForkServer | None = None
        self._wanted: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}
        self._closed = False

    @override
    async def start(self, tasks: Sequence[Task[Any, Any]]) -> None:
        """Check the tasks' ``runner_options``, then start the fork server (so the first job does not wait for it)."""
        modules = []
        for task in tasks:
            self._wanted_by(task)
            with contextlib.suppress(Unrecoverable):  # its jobs fail with the reason
                modules.append(module_of(task))
        if self._server is None:
            self._server = self._new_server()
        await self._server.preload(modules)

    def _wanted_by(self, task: Task[Any, Any]) -> tuple[frozenset[str], tuple[str, ...]]:
        wanted = self._wanted.get(task.name)
        if wanted is None:
            wanted = self._wanted[task.name] = wanted_environment(task)
        return wanted

    def _new_server(self) -> _ForkServer:
        names: set[str] = set()
        for exact, prefixes in self._wanted.values():
            names |= exact | {name for name in os.environ if name.startswith(prefixes)}
        return _ForkServer(server_environment(os.environ, names))

    @override
    async def run(self, task: Task[Any, Any], job: Job, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run the attempt in a child; the child hands the task its job (see ``_child.py``) and ``args``."""
        if self._closed:
            raise RuntimeError("the subprocess runner is closed")
        exact, prefixes = self._wanted_by(task)
        env = {name: os.environ[name] for name in exact if name in os.environ}
        if prefixes:
            env.update((name, value) for name, value in os.environ.items() if name.startswith(prefixes))
        if self._server is None or self._server.lost:
            if self._server is not None:
                await self._server.close()
            self._server = self._new_server()
        return await self._server.run(task, job, args, kwargs, env)

    @override
    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            await self._server.close()
            self._server = None


def wanted_environment(task: Task[Any, Any]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The environment variables ``task`` asks for beyond the base ones: exact names, and name prefixes
    (``"AWS_*"``; ``"*"`` is every variable). Anything but ``{"env": [names]}`` is a ConfigurationError."""
    options = dict(task.runner_options)
    wanted = options.pop("env", [])
    if options:
        raise ConfigurationError(
            f"task {task.name}: the subprocess runner reads only runner_options['env'], not {sorted(options)}"
        )
    if isinstance(wanted, str | bytes) or not isinstance(wanted, list | tuple) or not all(map(_env_pattern, wanted)):
        raise ConfigurationError(
            f"task {task.name}: runner_options['env'] must be a list of the environment variables the task's "
            f"process may see besides the base ones, e.g. ['DATABASE_URL', 'AWS_*'] (a trailing * matches a "
            f"prefix); got {wanted!r}"
        )
    exact = frozenset(name for name in wanted if not name.endswith("*"))
    return exact, tuple(name[:-1] for name in wanted if name.endswith("*"))


def _env_pattern(name: object) -> bool:
    """A variable's name, or a prefix followed by ``*``."""
    if not isinstance(name, str):
        return False
    stem = name.removesuffix("*")
    return (stem != "" or name == "*") and not any(char in stem for char in "=*\0")


class _ForkServer:
    """The fork server process, and the worker's ends of its sockets and of its children's channels."""

    def __init__(self, env: Mapping[str, str]) -> None:
        requests, server_requests = socket.socketpair()
        reports, server_reports = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", BOOT, json.dumps(sys.path), str(server_reports.fileno())],
                stdin=server_requests.fileno(),
                pass_fds=(server_reports.fileno(),),
                env=env,
                start_new_session=True,  # neither Ctrl-C nor the worker's process group signals reach it
            )
        except BaseException:
            requests.close()
            reports.close()
            raise
        finally:
            server_requests.close()
            server_reports.close()
        self._requests = requests
        self._reports = reports
        self._ids = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._abandoned: set[int] = set()  # runs stopped before their child was reported started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attaching: asyncio.Future[None] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._gone = asyncio.Event()

    @property
    def lost(self) -> bool:
        """The fork server exited (see ``_on_server_gone``)."""
        return self._gone.is_set()

    async def _attach(self) -> None:
        """Connect the sockets to the running loop (the loop the worker runs on; the server starts before it)."""
        loop = self._loop = asyncio.get_running_loop()
        self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, self._requests)
        self._reports.setblocking(False)
        loop.add_reader(self._reports.fileno(), self._on_reports)

    async def _attached(self) -> None:
        if self._attaching is None:
            self._attaching = asyncio.ensure_future(self._attach())
        await asyncio.shield(self._attaching)  # the first runs all wait for it; a cancelled one does not stop it

    def _send(self, request: Mapping[str, Any]) -> None:
        assert self._stdin is not None
        body = json.dumps(request, separators=(",", ":")).encode()
        self._stdin.write(len(body).to_bytes(REQUEST_HEADER, "big") + body)

    async def preload(self, modules: Sequence[str]) -> None:
        """Have the fork server import these task modules now, before the first job needs them."""
        await self._attached()
        self._send({"modules": list(dict.fromkeys(modules))})

    async def run(
        self,
        task: Task[Any, Any],
        job: Job,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> Any:
        await self._attached()
        module = module_of(task)
        number = next(self._ids)
        run = _Run(number, job, asyncio.get_running_loop().create_future())
        self._runs[number] = run
        request = {
            "id": number,
            "modules": [module],
            "task": task.name,
            "args": list(args),
            "kwargs": dict(kwargs),
            "job": {"job_id": job.id, "queue": job.queue, "task": job.task, "attempt": job.attempt, "token": job.token},
        }
        if env:
            request["env"] = dict(env)
        try:
            self._send(request)
            try:
                return await run.outcome
            except asyncio.CancelledError:  # the outcome is cancelled with it
                await self._stop(number, run)
                raise
        finally:
            self._close_channel(run)  # nothing the child sends after its outcome is read
            if run.outcome.cancelled() or not run.outcome.done() or run.pid is None or run.exited.is_set():
                del self._runs[number]
            else:
                self._linger(run)

    def _linger(self, run: _Run) -> None:
        """The outcome is in, and the child (which exits right after sending it) is not reported gone yet:
        SIGKILL its group if it still runs after ``OUTCOME_GRACE``. It stays in ``_runs`` until its ``x``
        report (then the fork server has killed what it left elsewhere too)."""
        assert self._loop is not None and run.pid is not None
        run.kill = self._loop.call_later(OUTCOME_GRACE, signal_group, run.pid, signal.SIGKILL)

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

    # -- the fork server's reports ---------------------------------------------------

    def _on_reports(self) -> None:
        """Read the fork server's reports (one a packet; only the fork server holds that socket)."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._reports, 1 << 16, 1, _RECEIVE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._on_server_gone()
                return
            try:
                self._on_report(json.loads(data), fds)
            except Exception:
                log.exception("subprocess runner: cannot act on the fork server's report %r", data[:200])
            finally:
                for fd in fds:  # a channel nobody adopted (its run was stopped meanwhile)
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _on_report(self, message: dict[str, Any], fds: list[int]) -> None:
        kind, number = message["k"], message["id"]
        run = self._runs.get(number)
        if run is None:
            if kind == "s" and number in self._abandoned:
                signal_group(message["pid"], signal.SIGKILL)
            if kind == "x":
                self._abandoned.discard(number)
            return
        if kind == "s":
            run.pid = message["pid"]
            if fds:
                self._open_channel(run, fds.pop())
            run.started.set()
        elif kind == "e":
            _settle(run.outcome, error=rebuild(message))
        elif kind == "x":
            self._read_channel(run, until_empty=True)  # the child is gone: all it wrote is there to read
            self._close_channel(run)
            run.exited.set()
            _settle(run.outcome, error=TaskCrashed(exit_reason(message["code"])))
            if run.kill is not None:  # run() returned already
                run.kill.cancel()
                del self._runs[number]

    def _on_server_gone(self) -> None:
        """The fork server exited (killed, or out of memory): fail what it was running; the next job starts another."""
        assert self._loop is not None
        self._loop.remove_reader(self._reports.fileno())
        self._gone.set()
        reason = "the subprocess runner's fork server exited"
        if self._runs:
            log.warning("%s (pid %d) with %d job(s) running; they fail", reason, self._process.pid, len(self._runs))
        for number, run in list(self._runs.items()):
            if run.pid is not None:
                signal_group(run.pid, signal.SIGKILL)  # nobody could report its end any more
            run.exited.set()
            _settle(run.outcome, error=TaskCrashed(reason))
            if run.kill is not None:
                run.kill.cancel()
                del self._runs[number]

    # -- each attempt's channel ------------------------------------------------------

    def _open_channel(self, run: _Run, fd: int) -> None:
        assert self._loop is not None
        os.set_blocking(fd, False)
        run.channel = fd
        self._loop.add_reader(fd, self._read_channel, run)

    def _close_channel(self, run: _Run) -> None:
        if run.channel is not None:
            assert self._loop is not None
            self._loop.remove_reader(run.channel)
            os.close(run.channel)
            run.channel = None

    def _read_channel(self, run: _Run, until_empty: bool = False) -> None:
        """Read what the child wrote and act on each whole frame; anything else breaks the channel, which
        fails this attempt only (and kills its process: nothing it sends can be trusted any more).

        ``until_empty``: the child has exited, so what it wrote is all in the socket's buffer (bounded by
        the buffer's size: its writes blocked until the rest was read); read it all, not more."""
        for _ in range(DRAIN_READS if until_empty else 1):
            if run.channel is None:
                return
            try:
                data = os.read(run.channel, 1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                self._break(run, f"reading it failed: {exc}")
                return
            if not data:  # the child ended, and nothing it started holds the channel
                self._close_channel(run)
                return
            run.unread += data
            try:
                self._read_frames(run)
            except ChannelBroken as exc:
                self._break(run, str(exc))
                return
            except Exception as exc:
                log.exception("subprocess runner: cannot act on run %d's message", run.number)
                self._break(run, f"the worker could not act on a message: {exc!r}")
                return

    def _read_frames(self, run: _Run) -> None:
        while (body := next_frame(run.number, run.unread)) is not None:
            kind, value = decode(body)
            if kind == "e":
                _settle(run.outcome, error=value)
            elif kind == "r":
                _settle(run.outcome, result=value)
            else:
                with contextlib.suppress(Exception):  # e.g. LeaseLost: the run's reports are refused anyway
                    if kind == "p":
                        run.job.progress(value)
                    else:
                        run.job.log(value)

    def _break(self, run: _Run, why: str) -> None:
        self._close_channel(run)
        if run.pid is not None:
            signal_group(run.pid, signal.SIGKILL)
        reason = (
            f"the task's channel to the worker broke: {why}. Something in the task's process wrote to the "
            "file descriptor taskmesh gave it for its reports; a task should write to files of its own, or print"
        )
        log.warning("subprocess runner: job %s: %s", run.job.id, reason)
        _settle(run.outcome, error=TaskCrashed(reason))

    async def close(self) -> None:
        """Close the server's stdin: it ends any child still running and exits."""
        if self._stdin is not None:
            self._stdin.close()
        else:
            self._requests.close()
        if self._loop is not None and not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), 2 * TERM_GRACE + KILL_WAIT)
        if self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._process.wait, TERM_GRACE + KILL_WAIT)
        if self._process.poll() is None:
            self._process.kill()
            await asyncio.to_thread(self._process.wait)
        if self._loop is not None and not self.lost:
            self._loop.remove_reader(self._reports.fileno())
        for run in self._runs.values():
            self._close_channel(run)
            if run.kill is not None:  # the fork server ended it
                run.kill.cancel()
        self._reports.close()


def next_frame(run: int, unread: bytearray) -> bytes | None:
    """The body of the next whole frame in ``unread`` (taken out of it), or None until more is read.

    Raises :class:`ChannelBroken` for anything but a frame of ``run`` of at most ``MAX_MESSAGE`` bytes."""
    end = unread.find(b"\n", 0, MAX_HEADER)
    if end < 0:
        if len(unread) >= MAX_HEADER:
            raise ChannelBroken(f"it carried {bytes(unread[:MAX_HEADER])!r}, which is not a frame header")
        return None
    header = unread[:end].split(b" ")
    if len(header) != 2 or not header[0].isdigit() or not header[1].isdigit():
        raise ChannelBroken(f"it carried {bytes(unread[: end + 1])!r}, which is not a frame header")
    if int(header[0]) != run:
        raise ChannelBroken(f"it carried a frame of run {int(header[0])}, not of this attempt's run")
    size = int(header[1])
    if size > MAX_MESSAGE:
        raise ChannelBroken(
            f"the task sent a message of {size} bytes, over the {MAX_MESSAGE >> 20} MiB a message may have "
            "(store large results elsewhere and return a reference)"
        )
    if len(unread) < end + 1 + size:
        return None
    body = bytes(unread[end + 1 : end + 1 + size])
    del unread[: end + 1 + size]
    return body


def decode(body: bytes) -> tuple[str, Any]:
    """A child's message: ``("p", progress)``, ``("l", log line)``, ``("r", result)`` or ``("e", exception)``.

    Raises :class:`ChannelBroken` for anything else."""
    try:
        message = json.loads(body)
        kind = message["k"]
        if kind == "e":
            return kind, rebuild(message)
        if kind in ("p", "l", "r") and isinstance(message["v"], str):
            return kind, message["v"] if kind == "l" else json.loads(message["v"])
        raise ValueError(kind)
    except (ValueError, TypeError, KeyError, RecursionError):
        raise ChannelBroken(f"it carried {body[:100]!r}, which is not a message of the task's process") from None


def _settle(outcome: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if outcome.done():  # settled already, or its awaiter was cancelled
        return
    if error is None:
        outcome.set_result(result)
    else:
        outcome.set_exception(error)


def rebuild(error: dict[str, Any]) -> BaseException:
    """The child's error, as the worker acts on it; the job records the child's type, message and traceback.

    Raises TypeError or ValueError for anything that is not such an error."""
    fields = (error["type"], error["message"], error.get("traceback", ""))
    if not all(isinstance(text, str) for text in fields):
        raise TypeError("an error's type, message and traceback are strings")
    remote = RemoteError(*fields)
    kind, message = error.get("kind"), error["message"]
    exc: BaseException
    if kind == "slowdown":
        exc = SlowDown(_seconds(error["delay"]), message)
    elif kind == "retry":
        exc = Retry(None if error["delay"] is None else _seconds(error["delay"]), message)
    elif kind == "unrecoverable":
        exc = Unrecoverable(message)
    elif kind == "cancelled":
        exc = Cancelled(message)
    else:
        return remote
    exc.__cause__ = remote
    return exc


def _seconds(delay: Any) -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError("a delay is a number of seconds")
    return float(delay)


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
