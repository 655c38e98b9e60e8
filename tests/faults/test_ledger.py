"""The fault tests' checker sees a ledger it cannot trust: a line that does not parse, a run whose
``start`` or ``finish`` line is missing. A checker that let these pass would hide a lost run."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from taskmesh import Client
from taskmesh.testing import drain

from .ledger import Ledger, check
from .tasks import short


@pytest.fixture
def finished(fault_client: Client, ledger: Ledger) -> str:
    """One job run to completion by an in-process worker, its runs in the ledger."""
    handle = short.enqueue(0)
    drain(fault_client, [short])
    check(fault_client, ledger, [handle.id]).assert_sound()
    return handle.id


def rewrite(ledger: Ledger, change: Callable[[list[str]], list[str]]) -> None:
    [file] = ledger.path.glob("*.jsonl")
    file.write_text("".join(line + "\n" for line in change(file.read_text().splitlines())))


def without(event: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [line for line in lines if json.loads(line)["event"] != event]


@pytest.mark.parametrize("event", ["start", "finish"])
def test_a_run_with_a_missing_ledger_line_is_not_sound(
    fault_client: Client, ledger: Ledger, finished: str, event: str
) -> None:
    rewrite(ledger, without(event))
    verdict = check(fault_client, ledger, [finished])
    assert verdict.unpaired_runs == [finished]
    with pytest.raises(AssertionError, match="runs with a ledger line missing"):
        verdict.assert_sound()


def test_a_ledger_line_that_does_not_parse_is_not_sound(fault_client: Client, ledger: Ledger, finished: str) -> None:
    rewrite(ledger, lambda lines: [*lines, lines[-1][: len(lines[-1]) // 2]])
    verdict = check(fault_client, ledger, [finished])
    assert verdict.torn_lines == 1
    with pytest.raises(AssertionError, match="1 ledger line"):
        verdict.assert_sound()

