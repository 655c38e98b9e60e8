"""The process-wide default client: the one ``Task.enqueue`` uses (``taskmesh.default_client``).

A module of its own, below both ``task.py`` and ``client.py``: a task reaches the default client here without
importing the client module (which imports ``task.py`` for ``Task`` and its checks). ``taskmesh.client`` tells
this module how to build a client when it is imported, which ``import taskmesh`` always does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .client import Client

#: Set in the environment of a task's process by the subprocess runner, which passes on only what the task
#: asks for: without the Redis URL, ``default_client()`` there would quietly reach another Redis.
CHILD_MARKER = "TASKMESH_SUBPROCESS"

_default: Client | None = None
_factory: Callable[[], Client] | None = None


def use_factory(factory: Callable[[], Client]) -> None:
    """Build the default client with ``factory`` (``taskmesh.client`` sets ``Client``: settings from the
    environment and pyproject.toml)."""
    global _factory
    _factory = factory


def default_client() -> Client:
    """The process-wide client used by ``Task.enqueue``: settings from ``TASKMESH_*`` (URL: ``TASKMESH_REDIS_URL``)."""
    global _default
    if _default is None:
        if os.environ.get(CHILD_MARKER) and "TASKMESH_REDIS_URL" not in os.environ:
            raise ConfigurationError(
                "this task runs in the subprocess runner, whose processes get a minimal environment without the "
                "worker's Redis URL; to enqueue from it, ask for the settings: @task(runner_options={'env': "
                "['TASKMESH_*']})"
            )
        if _factory is None:
            raise ConfigurationError("no client can be built: import taskmesh (or taskmesh.client) first")
        _default = _factory()
    return _default


def set_default_client(client: Client | None) -> None:
    """Make ``client`` the one ``Task.enqueue`` uses (None: build it from the environment again)."""
    global _default
    _default = client
