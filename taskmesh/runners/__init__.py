"""Execution backends. A runner runs one attempt of a task and returns its result."""

from .base import BaseRunner, Runner, RunnerRegistry

__all__ = ["BaseRunner", "Runner", "RunnerRegistry"]
