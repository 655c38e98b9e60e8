from taskmesh import hookimpl


class PrintSink:
    def __init__(self, settings):
        pass

    async def emit(self, event):  # Event: id, queue, name, job_id, data (task, duration_ms, ...)
        print(event.name, event.job_id, event.data.get("task"))

    async def close(self):
        pass


@hookimpl
def taskmesh_register_sinks(register):
    register.add("print", PrintSink)  # enabled by sinks = ["print"]
