"""Execution backends. A runner runs one attempt of a task and returns its result."""

from .base import BaseRunner, Runner, RunnerRegistry
from .outcome import JobTimeoutError, error_json, result_json

__all__ = ["BaseRunner", "JobTimeoutError", "Runner", "RunnerRegistry", "error_json", "result_json"]
