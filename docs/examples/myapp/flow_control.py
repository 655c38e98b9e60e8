"""Flow control: a task's own limits and ``SlowDown``; a queue's limit, pause and resume; cancel."""

from taskmesh import Client, JobHandle, Limit, SlowDown, task


class Partner:
    """A stand-in for a partner's API: it asks each order's first call to come back later."""

    class TooManyRequests(Exception):
        def __init__(self, retry_after: float) -> None:
            super().__init__(f"retry after {retry_after} s")
            self.retry_after = retry_after

    def __init__(self) -> None:
        self.asked: set[str] = set()
        self.posted: list[str] = []

    def post(self, order_id: str) -> None:
        if order_id not in self.asked:
            self.asked.add(order_id)
            raise self.TooManyRequests(retry_after=0)
        self.posted.append(order_id)


partner = Partner()


# --8<-- [start:task]
@task(rate_limit="100/m", max_active=5)  # per task: at most 100 starts in any minute, 5 running at once
def call_partner_api(order_id: str) -> None:
    try:
        partner.post(order_id)
    except partner.TooManyRequests as exc:
        raise SlowDown(exc.retry_after) from exc  # run again later; this attempt is not counted


# --8<-- [end:task]


def control(client: Client, handle: JobHandle) -> None:
    # --8<-- [start:control]
    client.set_limit("emails", Limit.parse("10/s", max_active=50))  # per queue, for every task in it
    client.pause("emails")
    client.resume("emails")
    handle.cancel()  # or client.cancel(job_id, queue) / taskmesh cancel JOB_ID
    # --8<-- [end:control]
