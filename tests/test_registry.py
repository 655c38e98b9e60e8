"""Task discovery: named modules, the taskmesh.tasks entry points, duplicate names."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmesh import ConfigurationError, DuplicateTaskError, Registry, task


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("regmod_"):
            del sys.modules[name]


def test_named_modules_are_imported_from_the_current_directory(module_dir: Path) -> None:
    (module_dir / "regmod_a.py").write_text(
        "from taskmesh import task\n\n@task\ndef one() -> int:\n    return 1\n\n@task(name='x.two', queue='q2')\n"
        "def two() -> int:\n    return 2\n"
    )
    registry = Registry.from_modules(["regmod_a"])
    assert [t.name for t in registry] == ["regmod_a.one", "x.two"]
    assert registry.queues == ["default", "q2"]


def test_two_tasks_with_one_name_fail_naming_both(module_dir: Path) -> None:
    header = "from taskmesh import task\n\n@task(name='same')\n"
    (module_dir / "regmod_b.py").write_text(header + "def first() -> None: ...\n")
    (module_dir / "regmod_c.py").write_text(header + "def second() -> None: ...\n")
    with pytest.raises(DuplicateTaskError) as info:
        Registry.from_modules(["regmod_b", "regmod_c"])
    assert "regmod_b:first" in str(info.value)
    assert "regmod_c:second" in str(info.value)


def test_a_missing_module_is_a_configuration_error(module_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="regmod_missing"):
        Registry.from_modules(["regmod_missing"])


def test_entry_point_modules_are_loaded_when_no_module_is_named() -> None:
    registry = Registry.discover([])
    assert "example_app.greet" in registry
    assert registry.get("example_app.greet") is not None


def test_decorating_registers_nothing_globally() -> None:
    @task(name="not.registered.anywhere")
    def lonely() -> None: ...

    assert "not.registered.anywhere" not in Registry.discover([])
