"""What one worker did, counted as it goes (``Worker.stats``; ``run()`` returns it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerStats:
    """What one worker did: jobs leased, completed, failed for good, retried, handed back, results refused,
    stalled jobs it recovered, runs stopped on a cancel request, and jobs deferred by ``SlowDown``;
    events its sinks dropped (a full buffer), stream entries skipped as malformed, and sink errors."""

    leased: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    refused: int = 0
    recovered: int = 0
    cancelled: int = 0
    deferred: int = 0
    events_dropped: int = 0
    events_skipped: int = 0
    sink_errors: int = 0
