"""Repository-wide pytest set-up. The taskmesh fixtures come from the installed pytest11 plugin
(``taskmesh.testing.pytest_plugin``); ``./dev test`` installs the package first."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("taskmesh") is None:
        raise pytest.UsageError("taskmesh is not installed: run the tests with ./dev test")
