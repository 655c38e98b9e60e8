# tests/test_exports.py
from myapp.tasks import export


def test_export(taskmesh_client, taskmesh_drain):
    handle = export.enqueue("u1")
    taskmesh_drain([export])  # run everything due; re-raises a task's error as JobFailed
    assert handle.result(timeout=5) == {"url": "/reports/u1.csv"}


def test_with_a_live_worker(taskmesh_client, taskmesh_worker):
    taskmesh_worker([export])  # a worker thread for this test, stopped afterwards
    assert export.enqueue("u2").result(timeout=5)["url"] == "/reports/u2.csv"
