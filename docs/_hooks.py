"""MkDocs hooks: the reference pages rendered from the source, so they cannot drift from it.

A page holds a marker, which is replaced by what the source says:

- ``<!-- render: hookspecs -->``: every hook spec of ``taskmesh/hookspecs.py``, grouped by its banner
  comments, with its signature and docstring (the docstrings are the reference);
- ``<!-- render: errors -->``: the classes of ``taskmesh/errors.py`` as a tree, each with its bases and
  docstring;
- ``<!-- render: api -->``: every name in ``taskmesh.__all__`` with its signature and docstring.

The hook specs and errors are read with ``ast`` (nothing is imported); the API is read from the
installed package. ``on_config`` also makes the snippet base paths absolute, so the site builds from
any working directory.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOOKSPECS = ROOT / "taskmesh" / "hookspecs.py"
ERRORS = ROOT / "taskmesh" / "errors.py"
PACKAGE_INIT = ROOT / "taskmesh" / "__init__.py"
BANNER = re.compile(r"^# -- (.+?) -+\s*$")
ROLE = re.compile(r":[a-z]+:`(~?[^`]+)`")
LITERAL = re.compile(r"``(.+?)``")
CODE_SPAN = re.compile(r"(`[^`]*`)")


def on_config(config: Any) -> Any:
    """Snippet paths are relative to the repository, wherever ``mkdocs`` runs from."""
    snippets = config["mdx_configs"].get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(ROOT / path) for path in snippets.get("base_path", ["."])]
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker on the page with what it renders."""
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


# -- docstrings ---------------------------------------------------------------


def heading(level: int, name: str) -> str:
    """A heading for a Python name, whose anchor is the name itself (``#Task`` and ``#task`` differ).

    A name with a double underscore would be read as emphasis in the attribute list: its anchor is the
    heading's own slug, which is the name when it is in lower case (``__version__``).
    """
    return f"{'#' * level} `{name}`" + ("" if "__" in name else f" {{ #{name} }}")


def markdown_of(docstring: str | None) -> str:
    """A docstring (reStructuredText roles and literals) as Markdown; text outside code is escaped."""
    if not docstring:
        return ""
    text = inspect.cleandoc(docstring)
    text = ROLE.sub(lambda m: f"``{short_name(m[1])}``", text)
    text = LITERAL.sub(lambda m: f"`{m[1]}`", text)
    parts = CODE_SPAN.split(text)
    return "".join(part if part.startswith("`") else escape(part) for part in parts)


def short_name(target: str) -> str:
    """``~taskmesh.errors.Cancelled`` is shown as ``Cancelled``; other role targets as written."""
    return target.rsplit(".", 1)[-1] if target.startswith("~") else target


def escape(text: str) -> str:
    """Characters that Markdown would read as markup, outside code spans."""
    text = text.replace("\\", "\\\\").replace("<", "&lt;")
    return re.sub(r"([*_\[\]])", r"\\\1", text)


# -- hook specs ---------------------------------------------------------------


def render_hookspecs() -> str:
    """Every ``@hookspec`` function of hookspecs.py, under the banner comment above it."""
    source = HOOKSPECS.read_text()
    tree = ast.parse(source)
    banners = {number: m[1] for number, line in enumerate(source.splitlines(), 1) if (m := BANNER.match(line))}
    out = [markdown_of(ast.get_docstring(tree)), ""]
    group = None
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and any(is_hookspec(d) for d in node.decorator_list)):
            continue
        above = [text for number, text in banners.items() if number < node.lineno]
        if above and above[-1] != group:
            group = above[-1]
            out += [f"## {group[:1].upper()}{group[1:]}", ""]
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        signature = f"def {node.name}({ast.unparse(node.args)}){returns}"
        out += [heading(3, node.name), "", "```python", "@hookspec", signature, "```"]
        out += ["", markdown_of(ast.get_docstring(node)), ""]
    return "\n".join(out)


def is_hookspec(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "hookspec"


# -- errors -------------------------------------------------------------------


def render_errors() -> str:
    """The exception classes of errors.py as a tree (each under its first base), then each one's entry."""
    tree = ast.parse(ERRORS.read_text())
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    names = {node.name for node in classes}
    exported = exported_names()
    children: dict[str, list[ast.ClassDef]] = {}
    for node in classes:
        children.setdefault(ast.unparse(node.bases[0]) if node.bases else "object", []).append(node)
    roots = [base for base in children if base not in names]
    out: list[str] = []
    for root in roots:
        out.append(f"- `{root}`")
        out += [f"    {line}" for line in tree_lines(root, children)]
    out.append("")
    for node in classes:
        bases = ", ".join(f"[`{b}`](#{b})" if b in names else f"`{b}`" for b in map(ast.unparse, node.bases))
        where = f"taskmesh.{node.name}" if node.name in exported else f"taskmesh.errors.{node.name}"
        out += [heading(2, node.name), "", f"`{where}`, a subclass of {bases}.", ""]
        out += [markdown_of(ast.get_docstring(node)), ""]
    return "\n".join(out)


def tree_lines(parent: str, children: dict[str, list[ast.ClassDef]]) -> Iterator[str]:
    for node in children.get(parent, []):
        also = [ast.unparse(b) for b in node.bases[1:]]
        suffix = f" (also `{'`, `'.join(also)}`)" if also else ""
        yield f"- [`{node.name}`](#{node.name}){suffix}"
        yield from (f"    {line}" for line in tree_lines(node.name, children))


def exported_names() -> set[str]:
    """Names the package's ``__init__`` imports from its errors module."""
    tree = ast.parse(PACKAGE_INIT.read_text())
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "errors" and node.level == 1
        for alias in node.names
    }


# -- API ----------------------------------------------------------------------


def render_api() -> str:
    """Every name in ``taskmesh.__all__``: signature and docstring; for classes their public methods."""
    package = importlib.import_module("taskmesh")
    errors = importlib.import_module("taskmesh.errors")
    out: list[str] = []
    for name in package.__all__:
        obj = getattr(package, name)
        out += [heading(2, name), ""]
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__:
            out += [f"An error: see [the errors](errors.md#{name}).", ""]
        elif inspect.isclass(obj):
            out += api_class(name, obj)
        elif inspect.isfunction(obj):
            out += ["```python", f"def {name}{signature(obj)}", "```", "", markdown_of(inspect.getdoc(obj)), ""]
        else:
            out += [api_value(name, obj), ""]
    return "\n".join(out)


def api_value(name: str, obj: object) -> str:
    """A name that is neither a class nor a function: a string's value, else what its type's docstring says."""
    if isinstance(obj, str):
        return f"`{name} = {obj!r}`"
    return f"A `{type(obj).__name__}`: {first_paragraph(type(obj).__doc__)}"


def api_class(name: str, cls: type) -> list[str]:
    shown = signature(cls).removesuffix(" -> None")
    out = ["```python", f"class {name}{shown}", "```", "", markdown_of(class_doc(cls)), ""]
    members = list(public_members(cls))
    if members:
        out += ["| member | |", "|---|---|"]
        out += [f"| `{member}` | {first_paragraph(doc)} |" for member, doc in members]
        out.append("")
    return out


def class_doc(cls: type) -> str | None:
    """The class's own docstring (an enum's or dataclass's generated one is not documentation)."""
    doc = cls.__dict__.get("__doc__")
    return doc if doc and not doc.startswith(f"{cls.__name__}(") else None


def public_members(cls: type) -> Iterator[tuple[str, str | None]]:
    """Public methods and properties the class itself defines, with their signatures."""
    for member, value in vars(cls).items():
        if member.startswith("_"):
            continue
        if isinstance(value, property):
            yield member, inspect.getdoc(value)
        elif isinstance(value, (classmethod, staticmethod)) or inspect.isfunction(value):
            function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            shown = signature(function, drop_first=not isinstance(value, staticmethod))
            yield f"{member}{shown}", inspect.getdoc(function)


def signature(obj: Callable[..., Any], drop_first: bool = False) -> str:
    """The signature as written in the source (string annotations shown without quotes)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())[1 if drop_first else 0 :]
    sig = sig.replace(parameters=params)
    text = str(sig)
    return re.sub(r"'([^']*)'", lambda m: m[1] if is_annotation(m[1], sig) else m[0], text)


def is_annotation(text: str, sig: inspect.Signature) -> bool:
    annotations = [p.annotation for p in sig.parameters.values()] + [sig.return_annotation]
    return text in annotations


def first_paragraph(doc: str | None) -> str:
    text = markdown_of(doc).split("\n\n", 1)[0]
    return " ".join(text.split()).replace("|", "\\|")


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- render: hookspecs -->": render_hookspecs,
    "<!-- render: errors -->": render_errors,
    "<!-- render: api -->": render_api,
}
