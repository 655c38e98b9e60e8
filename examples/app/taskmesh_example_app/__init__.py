"""An example application: its tasks are registered under the ``taskmesh.tasks`` entry point."""
