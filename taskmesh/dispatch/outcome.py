"""Kept for imports of the old path: the outcome format lives in :mod:`taskmesh.runners.outcome`."""

from ..runners.outcome import JobTimeoutError, error_json, result_json

__all__ = ["JobTimeoutError", "error_json", "result_json"]
