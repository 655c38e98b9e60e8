"""The documentation: the README stays a short door, the site builds without a warning, the reference pages
name everything the source defines, and the docs' code examples run against a real Redis."""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config

import taskmesh
from taskmesh import errors, hookspecs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
