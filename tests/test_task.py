"""Declaring tasks: the @task decorator, its options, Backoff, and the static types of enqueue."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import mypy_snippet

from taskmesh import Backoff, DuplicateTaskError, Job, Registry, Retry, Task, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task(name="reports.export", queue="reports", retries=3, backoff=Backoff.exponential(2, cap=60), timeout=60, priority=5)
def export(job: Job, user_id: str) -> dict[str, str]:
    return {"url": f"/reports/{user_id}.csv", "job": job.id}


@task()
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_bare_decorator_returns_task_named_after_module_and_function() -> None:
    assert isinstance(add, Task)
    assert add.name == f"{__name__}.add"
    assert add.queue == "default"
    assert (add.retries, add.timeout, add.priority, add.runner) == (0, None, 0, "inline")
    assert add.backoff == Backoff()


def test_decorator_options_are_kept_on_the_task() -> None:
    assert isinstance(export, Task)
    assert (export.name, export.queue, export.retries, export.timeout, export.priority) == (
        "reports.export",
        "reports",
        3,
        60,
        5,
    )
    assert export.backoff == Backoff(base=2, factor=2, cap=60, jitter=0.25)


def test_decorator_with_empty_parentheses_uses_defaults() -> None:
    assert isinstance(double, Task)
    assert (double.name, double.queue) == (f"{__name__}.double", "default")


def test_calling_a_task_calls_the_function() -> None:
    assert add(2, 3) == 5
    assert add.is_async is False


def test_calling_an_async_task_returns_the_coroutine_of_the_function() -> None:
    assert double.is_async is True
    assert asyncio.run(double(21)) == 42


def test_task_defined_inside_a_function_gets_a_valid_default_name() -> None:
    @task
    def inner() -> None: ...

    assert inner.name == f"{__name__}.test_task_defined_inside_a_function_gets_a_valid_default_name.inner"


def test_unnamable_function_asks_for_an_explicit_name() -> None:
    with pytest.raises(ValueError, match=r"@task\(name=\.\.\.\)"):
        task(lambda: None)
    assert task(name="ok.lambda")(lambda: None).name == "ok.lambda"


def test_unknown_option_is_a_type_error_naming_the_option() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*crontab"):
        task(crontab="* * * * *")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"retries": -1}, ValueError, "retries must be an int >= 0"),
        ({"retries": 1.5}, ValueError, "retries must be an int >= 0"),
        ({"retries": True}, ValueError, "retries must be an int >= 0"),
        ({"priority": 1001}, ValueError, "priority must be an int from -1000 to 1000"),
        ({"priority": -1001}, ValueError, "priority must be an int from -1000 to 1000"),
        ({"priority": "high"}, ValueError, "priority must be an int"),
        ({"backoff": "5s"}, TypeError, "backoff must be seconds or a taskmesh.Backoff"),
        ({"backoff": -1}, ValueError, "invalid backoff"),
        ({"backoff": float("nan")}, ValueError, "invalid backoff"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": "10"}, ValueError, "timeout must be > 0"),
        ({"queue": "bad queue"}, ValueError, "invalid queue name"),
        ({"name": "a{b}"}, ValueError, "invalid task name"),
        ({"runner": ""}, ValueError, "invalid runner name"),
    ],
)
def test_invalid_option_value_is_refused_at_decoration(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        task(**options)(add.fn)


def test_decorating_registers_nothing_so_two_tasks_may_share_a_name() -> None:
    first = task(name="same.name")(add.fn)
    second = task(name="same.name")(double.fn)
    assert first is not second
    with pytest.raises(DuplicateTaskError, match=r"same\.name"):
        Registry([first, second])


def test_first_parameter_annotated_job_receives_the_job() -> None:
    assert export.takes_job is True
    assert add.takes_job is False

    def job_later(x: int, job: Job) -> None: ...

    def job_by_name(job, x):  # type: ignore[no-untyped-def]
        ...

    assert task(job_later).takes_job is False
    assert task(job_by_name).takes_job is False


def test_job_parameter_is_detected_with_an_unresolvable_string_annotation() -> None:
    def later(job: Job, x: Undefined) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    assert task(later).takes_job is True


def test_job_parameter_is_not_part_of_the_enqueued_arguments() -> None:
    call = export.call("u1")
    assert (call.task, tuple(call.args), dict(call.kwargs)) == ("reports.export", ("u1",), {})
    assert (call.queue, call.priority) == ("reports", 5)
    assert export.call(user_id="u2").kwargs == {"user_id": "u2"}


def test_options_describe_one_call_without_changing_the_task() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    call = export.options(job_id="export:u1", run_at=when, priority=-3, queue="slow").call("u1")
    assert (call.job_id, call.run_at, call.priority, call.queue, call.delay) == ("export:u1", when, -3, "slow", None)
    assert (export.queue, export.priority) == ("reports", 5)
    assert add.options(delay=2.5).call(1, 2).delay == 2.5


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"job_id": "a{b}"}, "invalid job id"),
        ({"job_id": ""}, "invalid job id"),
        ({"priority": 5000}, "priority must be"),
        ({"queue": "a b"}, "invalid queue name"),
        ({"delay": 1, "run_at": datetime(2030, 1, 1, tzinfo=UTC)}, "delay or run_at"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at must say its time zone"),
        ({"job_id": "nightly@1767225600000"}, "reserved"),
        ({"job_id": "invoice-\u202egpj.exe"}, "invalid job id"),
    ],
)
def test_invalid_call_options_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        add.options(**options)


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "5", True, 1e300])
def test_retry_delay_must_be_a_finite_number_of_seconds_from_zero(delay: Any) -> None:
    with pytest.raises(ValueError, match="Retry delay must be a number of seconds"):
        Retry(delay=delay)


def test_retry_keeps_a_valid_delay_and_its_reason() -> None:
    assert (Retry().delay, Retry(delay=0).delay, Retry(delay=2.5).delay) == (None, 0, 2.5)
    assert str(Retry(1, "busy")) == "busy"


# -- Backoff ---------------------------------------------------------------------


def test_fixed_backoff_waits_the_same_every_time() -> None:
    backoff = Backoff.fixed(5)
    assert [backoff.delay(n) for n in (1, 2, 10)] == [5, 5, 5]


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff.exponential(1, cap=10, jitter=0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert Backoff.exponential(0.5, factor=3, cap=100, jitter=0).delay(3) == 4.5


def test_jitter_shortens_the_delay_by_at_most_its_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    backoff = Backoff.exponential(4, cap=100, jitter=0.25)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert backoff.delay(2) == 8
    monkeypatch.setattr(random, "random", lambda: 0.999999)
    assert backoff.delay(2) == pytest.approx(6, abs=1e-4)
    monkeypatch.undo()
    samples = [backoff.delay(2) for _ in range(500)]
    assert all(6 <= s <= 8 for s in samples)
    assert len(set(samples)) > 1


def test_backoff_of_a_late_attempt_stays_at_the_cap() -> None:
    assert Backoff.exponential(1, cap=300, jitter=0).delay(5000) == 300
    assert Backoff.exponential(0, cap=300, jitter=0).delay(5000) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"base": -1},
        {"factor": 0.5},
        {"cap": -1},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"cap": float("inf")},
    ],
)
def test_invalid_backoff_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**fields)


# -- static types ------------------------------------------------------------------

TYPED_SNIPPET = """\
from taskmesh import Job, task


@task(name="reports.export", queue="reports")
def export(job: Job, user_id: str) -> dict[str, str]:
    return {"url": user_id}


@task
async def add(x: int, y: int) -> int:
    return x + y


export.enqueue(user_id=1)  # wrong-type
export.enqueue(user_id="u1")  # fine
export.options(job_id="x").enqueue("u1")  # fine-with-options
add.enqueue(1)  # missing-argument
reveal_type(export.enqueue("u1"))  # reveal-export
reveal_type(add.enqueue(1, 2))  # reveal-add
reveal_type(add.options(delay=1).enqueue(1, 2))  # reveal-add-options
"""


def test_enqueue_arguments_and_result_type_are_checked_by_mypy(tmp_path: Path) -> None:
    line_of, reported, output = mypy_snippet(tmp_path, TYPED_SNIPPET)
    wrong = reported.get(line_of["wrong-type"], "")
    assert '"user_id"' in wrong and '"int"' in wrong and "[arg-type]" in wrong, output
    assert "[call-arg]" in reported.get(line_of["missing-argument"], ""), output
    revealed = 'Revealed type is "taskmesh.job.JobHandle[{}]"'
    assert revealed.format("dict[str, str]") in reported.get(line_of["reveal-export"], ""), output
    assert revealed.format("int") in reported.get(line_of["reveal-add"], ""), output
    assert revealed.format("int") in reported.get(line_of["reveal-add-options"], ""), output
    assert line_of["fine"] not in reported and line_of["fine-with-options"] not in reported, output
    assert len(reported) == 5, output
