"""The documentation: the README stays a short door, the site builds without a warning, the reference pages
name everything the source defines, and the docs' code examples run against a real Redis."""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config

import taskmesh
from taskmesh import Call, Client, JobState, Limit, Registry, Worker, errors, hookspecs
from taskmesh.testing import RunningWorker, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "docs" / "examples"
BOUND = 10.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as ``./dev test`` builds it (``strict``: a warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(out))
    assert config.strict, "mkdocs.yml should build strictly"
    build(config)
    return out


def article(site: Path, page: str) -> str:
    """The page's content (its article), without the site's navigation."""
    text = (site / page / "index.html").read_text()
    start, end = text.index("<article"), text.index("</article>")
    return text[start:end]


def plain(fragment: str) -> str:
    """Text as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def docstring_text(obj: object) -> str:
    """A docstring's first paragraph as it reads on the page (literals and roles without their markup)."""
    first = inspect.cleandoc(inspect.getdoc(obj) or "").split("\n\n", 1)[0]
    first = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", first).replace("``", "")
    return " ".join(first.split())


class ListTree(HTMLParser):
    """Nested lists: for each item that opens with a code name, the names of the items it is nested in."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[str | None] = []
        self.in_code = False
        self.parents: dict[str, list[str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "li":
            self.items.append(None)
        elif tag == "code" and self.items and self.items[-1] is None:
            self.in_code = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self.items.pop()
        elif tag == "code":
            self.in_code = False

    def handle_data(self, data: str) -> None:
        if self.in_code and self.items[-1] is None:
            self.items[-1] = data
            self.parents[data] = self.items[:-1]


def hookspec_functions() -> Iterator[object]:
    for name, value in vars(hookspecs).items():
        if name.startswith("taskmesh_") and hasattr(value, "taskmesh_spec"):
            yield value


def error_classes() -> list[type[BaseException]]:
    return [
        value
        for name, value in vars(errors).items()
        if not name.startswith("_")
        and inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]


def test_the_readme_is_a_door_of_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material into docs/"


def test_every_hookspec_is_in_the_rendered_hook_reference_with_its_signature_and_docstring(site: Path) -> None:
    page = article(site, "extending/hooks")
    text = plain(page)
    hooks = list(hookspec_functions())
    assert hooks, "hookspecs.py defines no hooks"
    for hook in hooks:
        name = hook.__name__  # type: ignore[attr-defined]
        signature = str(inspect.signature(hook)).replace("'", "")  # type: ignore[arg-type]
        assert f'id="{name}"' in page, f"the hook reference has no heading for {name}"
        assert f"def {name}{signature}" in text, f"the hook reference lacks the signature of {name}"
        assert docstring_text(hook) in text, f"the hook reference lacks the docstring of {name}"


def test_every_public_error_class_is_in_the_rendered_errors_tree_under_its_base(site: Path) -> None:
    page = article(site, "reference/errors")
    tree = ListTree()
    tree.feed(page)
    classes = error_classes()
    assert classes, "errors.py defines no errors"
    for cls in classes:
        base = cls.__bases__[0].__name__
        assert cls.__name__ in tree.parents, f"{cls.__name__} is not in the errors tree"
        assert tree.parents[cls.__name__][-1] == base, f"{cls.__name__} is not under {base} in the errors tree"
        assert f'id="{cls.__name__}"' in page, f"the errors page has no entry for {cls.__name__}"
        assert docstring_text(cls) in plain(page), f"the errors page lacks the docstring of {cls.__name__}"


def test_every_exported_name_is_in_the_rendered_api_reference(site: Path) -> None:
    page = article(site, "reference/api")
    for name in taskmesh.__all__:
        assert f'id="{name}"' in page, f"the API reference has no entry for {name}"


# -- the docs' examples: real files, included into the pages, run here against a real Redis --------------


def example(name: str) -> ModuleType:
    """A module of docs/examples (which the pages include). The ``myapp`` package is imported as the pages name
    it (its task names depend on it); a file of its own is loaded under a name no test module can take."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    if name.startswith("myapp."):
        return importlib.import_module(name)
    unique = f"taskmesh_docs_example_{name}"
    if unique not in sys.modules:
        spec = importlib.util.spec_from_file_location(unique, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        sys.modules[unique] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[unique]


def section(path: Path, name: str) -> str:
    """The lines of a snippet section (``# --8<-- [start:name]`` to ``[end:name]``), dedented as pages show them."""
    found = re.search(rf"# --8<-- \[start:{name}\]\n(.*?)\n\s*# --8<-- \[end:{name}\]", path.read_text(), re.S)
    assert found, f"{path.name} has no section {name}"
    return textwrap.dedent(found[1]).strip()


def plugin_worker(client: Client, tasks: list[object], plugin: ModuleType, **settings: object) -> RunningWorker:
    """A worker in a thread that loads ``plugin`` (the fixtures' workers load no plugins)."""
    registry = Registry(tasks)  # type: ignore[arg-type]
    cfg = client.settings.replace(queues=registry.queues, **settings)
    return RunningWorker(Worker.create(registry, cfg, plugins=[plugin], entry_points=False)).start()


def test_the_readme_quickstart_is_the_docs_example() -> None:
    readme = README.read_text()
    assert (EXAMPLES / "myapp" / "tasks.py").read_text().strip() in readme, "the README's tasks differ from the example"
    assert section(EXAMPLES / "myapp" / "producer.py", "enqueue") in readme, "the README's enqueue differs"


def test_the_quickstart_tasks_run_with_the_names_queues_progress_and_log_they_declare(
    taskmesh_client: Client, taskmesh_drain: Callable[..., object]
) -> None:
    tasks = example("myapp.tasks")
    assert tasks.add(1, 2) == 3
    assert (tasks.add.name, tasks.add.queue) == ("myapp.tasks.add", "default")
    handle = tasks.export.enqueue("u1")
    taskmesh_drain([tasks.export])
    status = handle.status()
    assert (status.state, status.result, status.progress) == (JobState.COMPLETED, {"url": "/reports/u1.csv"}, 40)
    assert any("halfway" in line for line in status.logs), status.logs


def test_the_quickstart_producer_follows_its_job_and_queues_a_delayed_one_by_its_id(
    taskmesh_client: Client, taskmesh_worker: Callable[..., RunningWorker]
) -> None:
    tasks, producer = example("myapp.tasks"), example("myapp.producer")
    taskmesh_worker([tasks.export])
    job_id, state, result = producer.enqueue_and_follow()
    assert result == {"url": "/reports/u1.csv"}
    assert state in set(JobState) and taskmesh_client.status(job_id, "reports") is not None
    delayed = taskmesh_client.status("export-u1", "reports")
    assert delayed is not None and (delayed.state, delayed.priority) == (JobState.DELAYED, 10)


def test_the_testing_page_examples_pass_with_the_fixtures(
    taskmesh_client: Client,
    taskmesh_drain: Callable[..., object],
    taskmesh_worker: Callable[..., RunningWorker],
) -> None:
    tests = example("test_exports")
    tests.test_export(taskmesh_client, taskmesh_drain)
    tests.test_with_a_live_worker(taskmesh_client, taskmesh_worker)


def test_the_flow_control_example_defers_on_slow_down_without_spending_an_attempt(
    taskmesh_client: Client, taskmesh_drain: Callable[..., object]
) -> None:
    flow = example("myapp.flow_control")
    handle = flow.call_partner_api.enqueue("o1")
    taskmesh_drain([flow.call_partner_api])
    status = handle.status()
    assert (status.state, status.attempts) == (JobState.COMPLETED, 1)
    assert flow.partner.posted.count("o1") == 1
    events = [e.name for e in taskmesh_client.events(["default"], since="0", timeout=0.1) if e.job_id == handle.id]
    assert "deferred" in events, events


def test_the_flow_control_example_sets_a_queue_limit_resumes_and_cancels(taskmesh_client: Client) -> None:
    flow = example("myapp.flow_control")
    handle = taskmesh_client.submit(Call(flow.call_partner_api.name, ["o2"], queue="emails", delay=60))
    flow.control(taskmesh_client, handle)
    settings = taskmesh_client.queue_settings("emails")
    assert (settings.paused, settings.limit) == (False, Limit(rate=10, per=1.0, max_active=50))
    assert handle.status().state is JobState.CANCELLED


def test_the_schedules_example_declares_three_schedules_and_manages_one(
    taskmesh_client: Client, taskmesh_worker: Callable[..., RunningWorker], capsys: pytest.CaptureFixture[str]
) -> None:
    schedules = example("myapp.schedules")
    declared = [schedules.nightly_cleanup, schedules.refresh_rates, schedules.sync_region]
    taskmesh_worker(declared)
    names = {task.name for task in declared}
    wait_until(lambda: names <= {i.entry.name for i in taskmesh_client.schedules()}, BOUND, message="the schedules")
    schedules.manage(taskmesh_client)
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("weekly-report ") and line.endswith(" False") for line in printed), printed
    assert {i.entry.name for i in taskmesh_client.schedules()} == names


def test_the_runner_example_runs_the_task_and_logs_done(taskmesh_client: Client) -> None:
    timed_runner = example("timed_runner")
    timed = taskmesh.task(name="docs.timed", runner="timed")(lambda: 42)
    worker = plugin_worker(taskmesh_client, [timed], timed_runner)
    try:
        handle = timed.enqueue()
        assert handle.result(timeout=BOUND) == 42
    finally:
        worker.stop()
    assert handle.status().logs[-1].endswith("done"), handle.status().logs


def test_the_sink_example_prints_each_event_of_a_job(
    taskmesh_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    print_sink = example("print_sink")
    echo = taskmesh.task(name="docs.echo")(lambda value: value)
    worker = plugin_worker(taskmesh_client, [echo], print_sink, sinks=("print",))
    printed: list[str] = []
    try:
        handle = echo.enqueue(1)
        handle.result(timeout=BOUND)
        expected = f"completed {handle.id} docs.echo"
        wait_until(lambda: printed.extend(capsys.readouterr().out.splitlines()) or expected in printed, BOUND)
    finally:
        worker.stop()
    assert f"enqueued {handle.id} docs.echo" in printed, printed
