"""Task options are declared once, in ``TaskOptions``: ``@task`` and ``Task`` take exactly its keywords (at run
time, for ``inspect.signature`` and for a type checker), list its docs, and keep what each option says."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import mypy_snippet

from taskmesh import Backoff, Limit, Schedule, Task, task
from taskmesh.task import TaskOptions

FIELDS = dataclasses.fields(TaskOptions)


def keywords(fn: Any) -> list[tuple[str, object, object]]:
    return [
        (p.name, p.default, p.annotation)
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def test_task_and_the_decorator_show_the_keywords_of_task_options_with_their_defaults() -> None:
    declared = [(f.name, f.default, f.type) for f in FIELDS]
    assert len(declared) == 14
    assert keywords(task) == keywords(Task) == declared


def test_every_option_has_a_doc_and_the_decorator_lists_it_with_its_default() -> None:
    doc = inspect.getdoc(task) or ""
    for f in FIELDS:
        assert f.metadata.get("doc"), f"TaskOptions.{f.name} has no doc"
        assert f"``{f.name}`` (``{f.default!r}``): {f.metadata['doc']}" in doc


def noop() -> None: ...


# Each option set to a value that is not its default, and what the task holds for it.
GIVEN: dict[str, tuple[Any, Any]] = {
    "name": ("opts.named", lambda t: t.name == "opts.named"),
    "queue": ("slow", lambda t: t.queue == "slow"),
    "retries": (4, lambda t: t.retries == 4),
    "backoff": (7, lambda t: t.backoff == Backoff.fixed(7)),
    "timeout": (9.5, lambda t: t.timeout == 9.5),
    "priority": (-3, lambda t: t.priority == -3),
    "runner": ("subprocess", lambda t: t.runner == "subprocess"),
    "runner_options": ({"env": ["X"]}, lambda t: dict(t.runner_options) == {"env": ["X"]}),
    "rate_limit": ("5/s", lambda t: t.limit == Limit(rate=5, per=1.0)),
    "max_active": (2, lambda t: t.limit == Limit(max_active=2)),
    "schedule": (Schedule(every=60), lambda t: t.schedule == Schedule(every=60)),
    "cron": ("0 0 * * *", lambda t: t.schedule == Schedule(cron="0 0 * * *")),
    "every": (timedelta(minutes=5), lambda t: t.schedule == Schedule(every=timedelta(minutes=5))),
    "tz": ("Europe/Berlin", None),  # needs cron= or every=: see below
}


def test_the_given_table_names_every_option() -> None:
    assert set(GIVEN) == {f.name for f in FIELDS}


@pytest.mark.parametrize("option", [name for name, (_, holds) in GIVEN.items() if holds is not None])
def test_each_option_given_to_the_decorator_or_to_task_is_what_the_task_holds(option: str) -> None:
    value, holds = GIVEN[option]
    assert holds(task(**{option: value})(noop)), option
    assert holds(Task(noop, **{option: value})), option
    assert not holds(task(noop)), f"{option}: the test value must differ from the default"


def test_tz_is_the_time_zone_of_the_schedule() -> None:
    every = task(every=60, tz="Europe/Berlin")(noop)
    assert every.schedule == Schedule(every=60, tz="Europe/Berlin")


def test_an_unknown_option_is_refused_by_task_too_naming_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"Task got unknown option\(s\) crontab; known: backoff, cron, every"):
        Task(noop, crontab="* * * * *")  # type: ignore[call-arg]


OPTIONS_SNIPPET = """\
from datetime import timedelta

from taskmesh import Backoff, Task, task


@task(retries=3, backoff=Backoff.fixed(1), timeout=5, every=timedelta(minutes=5), runner_options={"a": 1})
def fine(x: int) -> int:
    return x


@task(retries="3")  # wrong-type
def wrong(x: int) -> int:
    return x


@task(retrys=3)  # misspelt
def misspelt(x: int) -> int:
    return x


def plain(x: int) -> int:
    return x


Task(plain, queue=1)  # task-wrong-type
reveal_type(fine)  # reveal-fine
"""


def test_the_options_are_type_checked_by_mypy_from_their_one_declaration(tmp_path: Path) -> None:
    line_of, reported, output = mypy_snippet(tmp_path, OPTIONS_SNIPPET)
    wrong = reported.get(line_of["wrong-type"], "")
    # The refusal lists the overloads; the keyword one is TaskOptions' fields, with their types.
    assert "[call-overload]" in wrong and "retries: int = ..., backoff: float | Backoff | None" in wrong, output
    assert '"retrys"' in reported.get(line_of["misspelt"], ""), output
    task_wrong = reported.get(line_of["task-wrong-type"], "")
    assert '"queue"' in task_wrong and "[arg-type]" in task_wrong, output
    assert 'Revealed type is "taskmesh.task.Task[[x: int], int]"' in reported.get(line_of["reveal-fine"], ""), output
    assert set(reported) == {line_of[n] for n in ("wrong-type", "misspelt", "task-wrong-type", "reveal-fine")}, output
