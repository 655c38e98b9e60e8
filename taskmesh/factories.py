"""What the runner and sink registries share: factories of one kind of plugin part, by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from .errors import ConfigurationError
from .names import check_name

if TYPE_CHECKING:
    from .settings import Settings

T = TypeVar("T")


class Factories(Generic[T]):
    """Passed to a registration hook: collects factories (``settings -> part``) by name."""

    #: What the parts are called in errors ("runner", "sink").
    kind: ClassVar[str]
    #: Where the names given to :meth:`build` come from, said in the error for an unknown one.
    source: ClassVar[str] = ""

    def __init__(self) -> None:
        self.factories: dict[str, Callable[[Settings], T]] = {}

    def add(self, name: str, factory: Callable[[Settings], T]) -> None:
        try:
            check_name(f"{self.kind} name", name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if name in self.factories:
            raise ConfigurationError(f"two plugins register a {self.kind} named {name!r}")
        self.factories[name] = factory

    def build(self, settings: Settings, names: Iterable[str]) -> dict[str, T]:
        """The parts ``names`` lists, in that order; an unknown name is a start-up error listing the known ones."""
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self.factories]
        if unknown:
            known = ", ".join(sorted(self.factories)) or "none"
            raise ConfigurationError(
                f"unknown {self.kind}(s) {', '.join(unknown)}{self.source}; known {self.kind}s: {known}"
            )
        return {name: self.factories[name](settings) for name in wanted}
