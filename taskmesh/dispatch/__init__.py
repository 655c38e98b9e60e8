"""The worker: leasing, running, renewing, recovering."""

from .worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
