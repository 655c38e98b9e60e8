"""Found by ``taskmesh run`` with no module named, through the ``taskmesh.tasks`` entry point."""

from taskmesh import task


@task(name="example_app.greet", queue="example-app")
def greet(name: str) -> str:
    return f"hello, {name}"
