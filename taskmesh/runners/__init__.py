"""Execution backends. A runner runs one attempt of a task and returns its result."""

from .base import Runner, RunnerRegistry

__all__ = ["Runner", "RunnerRegistry"]
