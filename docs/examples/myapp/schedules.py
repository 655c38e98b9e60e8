"""Schedules declared in code, and schedules managed at run time."""

from datetime import timedelta

from taskmesh import Client, Schedule, task


# --8<-- [start:declare]
@task(cron="0 3 * * *", tz="Europe/Berlin")  # every night at 03:00 Berlin time
def nightly_cleanup() -> None: ...


@task(every=timedelta(minutes=5))  # on every fifth minute (ticks align to the epoch)
async def refresh_rates() -> None: ...


@task(schedule=Schedule(cron="*/15 * * * *", args=["eu"], misfire="catch_up", catch_up_max=10, overlap="skip"))
def sync_region(region: str) -> None: ...


# --8<-- [end:declare]


def manage(client: Client) -> None:
    # --8<-- [start:manage]
    client.schedule("weekly-report", "reports.build", cron="0 8 * * mon", args=["all"], queue="reports")  # upsert
    client.pause_schedule("weekly-report")
    client.resume_schedule("weekly-report")
    for info in client.schedules():
        print(info.entry.name, info.next_tick, info.last_tick, info.paused)
    client.remove_schedule("weekly-report")
    # --8<-- [end:manage]
