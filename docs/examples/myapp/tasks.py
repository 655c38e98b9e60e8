# myapp/tasks.py
from taskmesh import Job, task


@task  # name "myapp.tasks.add", queue "default"
def add(x: int, y: int) -> int:
    return x + y


@task(name="reports.export", queue="reports", retries=3, timeout=600)
def export(job: Job, user_id: str) -> dict:
    job.progress(40)  # a number 0..100 or a JSON object
    job.log("halfway")
    return {"url": f"/reports/{user_id}.csv"}
