"""The public surface: a sorted, complete ``__all__`` and documented hooks."""

from __future__ import annotations

import inspect
from pathlib import Path

import taskmesh
from taskmesh import hookspecs


def test_all_is_sorted_and_names_only_what_exists() -> None:
    assert taskmesh.__all__ == sorted(taskmesh.__all__)
    assert all(hasattr(taskmesh, name) for name in taskmesh.__all__)


def test_every_public_class_and_function_of_the_package_is_exported() -> None:
    public = {
        name
        for name, value in vars(taskmesh).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert public <= set(taskmesh.__all__)


def test_every_hook_is_documented_and_named_on_the_plugins_page() -> None:
    hooks = [value for name, value in vars(hookspecs).items() if name.startswith("taskmesh_")]
    page = (Path(__file__).parent.parent / "docs" / "guide" / "plugins.md").read_text()
    assert hooks, "hookspecs.py defines no hooks"
    for hook in hooks:
        assert inspect.getdoc(hook), f"{hook.__name__} has no docstring"
        assert hook.__name__ in page, f"{hook.__name__} is not named on docs/guide/plugins.md"
