import asyncio

from typing_extensions import override

from taskmesh import hookimpl
from taskmesh.runners import BaseRunner


class TimedRunner(BaseRunner):
    @override
    async def run(self, task, job, args, kwargs):
        call_args = self.call_args(task, job, args)  # the job's own arguments, after the Job if the task takes it
        if task.is_async:
            result = await task.fn(*call_args, **kwargs)
        else:
            result = await asyncio.to_thread(task.fn, *call_args, **kwargs)  # never block the worker's loop
        job.log("done")
        return result


@hookimpl
def taskmesh_register_runners(register):
    register.add("timed", TimedRunner)
