from taskmesh import hookimpl
from taskmesh.runners.inline import InlineRunner


class TimedRunner:
    def __init__(self, settings):
        self.inner = InlineRunner(settings)

    async def run(self, task, job, args, kwargs):  # args include the Job when the task takes one
        result = await self.inner.run(task, job, args, kwargs)
        job.log("done")
        return result

    async def close(self):
        await self.inner.close()


@hookimpl
def taskmesh_register_runners(register):
    register.add("timed", TimedRunner)
