"""One longest delay (``MAX_DELAY_SECONDS``, ten years): refused where a delay is asked for, kept whole up to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from taskmesh import Client, JobState, Retry, SlowDown, WorkerStats, task
from taskmesh.errors import MAX_DELAY_SECONDS

Drain = Callable[..., WorkerStats]
YEAR = 365 * 24 * 3600


@task(name="max_delay.retry_in_two_years", retries=1)
def retry_in_two_years() -> None:
    raise Retry(delay=2 * YEAR)


@task(name="max_delay.slow_down_two_years")
def slow_down_two_years() -> None:
    raise SlowDown(2 * YEAR)


def delays(client: Client, job_id: str, event: str) -> list[str]:
    """The ``delay`` field (ms) of the job's events called ``event``."""
    entries = cast(list[tuple[str, dict[str, Any]]], client.redis.xrange(client.keys("default").events))
    return [fields["delay"] for _, fields in entries if fields["job"] == job_id and fields["event"] == event]


def test_a_delay_over_the_maximum_is_refused_where_it_is_asked_for(taskmesh_client: Client) -> None:
    over = MAX_DELAY_SECONDS + 1
    with pytest.raises(ValueError, match=r"^Retry delay must be a number of seconds from 0 to 315360000 \(ten years\)"):
        Retry(delay=over)
    with pytest.raises(ValueError, match=r"^SlowDown delay must be a number of seconds from 0 to 315360000 \(ten"):
        SlowDown(over)
    with pytest.raises(ValueError, match="delay must be at most 315360000 seconds"):
        retry_in_two_years.options(delay=over).enqueue()
    assert Retry(delay=MAX_DELAY_SECONDS).delay == SlowDown(MAX_DELAY_SECONDS).delay == MAX_DELAY_SECONDS
    assert taskmesh_client.counts()["delayed"] == 0


@pytest.mark.parametrize(
    ("years_ahead", "event"),
    [(retry_in_two_years, "retrying"), (slow_down_two_years, "deferred")],
    ids=["retry", "defer"],
)
def test_a_retry_or_deferral_two_years_ahead_is_kept_whole(
    taskmesh_client: Client, taskmesh_drain: Drain, years_ahead: Any, event: str
) -> None:
    handle = years_ahead.enqueue()
    taskmesh_drain([years_ahead])
    assert delays(taskmesh_client, handle.id, event) == [str(2 * YEAR * 1000)], "the delay asked for, not shortened"
    assert handle.status().state is JobState.DELAYED
