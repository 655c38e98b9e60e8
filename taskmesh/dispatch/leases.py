"""Lease renewal on a thread of its own, so a task that hogs the event loop keeps its lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..settings import Settings
from ..store import QueueStore, RedisError
from ..store.worker import UNREACHABLE_ERRORS
from .retry import Streak

log = logging.getLogger("taskmesh.worker")
#: One lease a worker holds: the queue, the job id and the fencing token.
Lease = tuple[str, str, int]


class LeaseKeeper:
    """Renews every lease a worker holds each ``renew_interval``, from a daemon thread with its own
    (sync) Redis connection.

    An async task that runs without awaiting starves the worker's event loop, but not this thread
    (the interpreter switches threads every few milliseconds), so its job is not taken for a stalled
    one and run again elsewhere. ``leases`` is called on this thread and must return a snapshot;
    ``lost(job_id, token)`` is called on this thread for each lease that is no longer this holder's,
    ``cancel(queue, job_id, token)`` for each leased job whose cancellation was requested.
    While Redis is unreachable the renewal is retried with a short backoff (at most ``renew_interval``).
    """

    def __init__(
        self,
        settings: Settings,
        leases: Callable[[], list[Lease]],
        lost: Callable[[str, int], None],
        cancel: Callable[[str, str, int], None],
    ) -> None:
        self.settings = settings
        self._leases = leases
        self._lost = lost
        self._cancel = cancel
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._main, name="taskmesh-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; returns once the thread has ended (or after ``timeout``)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        interval = self.settings.renew_interval
        options = {"socket_timeout": self.settings.lease_seconds, "socket_connect_timeout": interval}
        store = QueueStore(self.settings, options=options, direct=False)
        delay, failures = interval, 0
        refused = Streak("lease renewal refused")
        try:
            while not self._stopped.wait(delay):
                try:
                    self.renew(store)
                except UNREACHABLE_ERRORS as exc:
                    if failures == 0:
                        log.warning("lease renewal: redis unreachable (%s); retrying", exc)
                    failures += 1
                    delay = min(interval, 0.05 * 2**failures)
                    continue
                except RedisError as exc:  # e.g. BUSY, READONLY, a key of the wrong type
                    refused.failed(exc)  # logged once a streak; try again next beat
                except Exception:  # never let one bad beat end the renewals: every lease would expire
                    log.exception("lease renewal failed")
                else:
                    refused.ok()
                delay, failures = interval, 0
        finally:
            store.close()

    def renew(self, store: QueueStore) -> None:
        """One renewal of every lease the worker holds, one script call per queue."""
        by_queue: dict[str, list[tuple[str, int]]] = {}
        for queue, job_id, token in self._leases():
            by_queue.setdefault(queue, []).append((job_id, token))
        for queue, leases in by_queue.items():
            tokens = dict(leases)
            lost, cancel = store.renew(queue, leases)
            for job_id in lost:
                self._lost(job_id, tokens[job_id])
            for job_id in cancel:
                self._cancel(queue, job_id, tokens[job_id])
