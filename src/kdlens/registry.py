"""Name -> object registries (datasets, models, loss terms, ...), timm style."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Resolver(Generic[T]):
    """Resolves names that start with ``prefix`` on first use (e.g. ``timm:<any timm model>``),
    for families too large or too dynamic to register one by one."""

    prefix: str
    resolve: Callable[[str], T | None]
    """The name without the prefix -> its object, or None when the name is unknown."""
    candidates: Callable[[], list[str]]
    """Known names without the prefix, for close-match hints (may be empty)."""
    describe: str
    """What such names are, for error messages (e.g. "timm:<name> for any timm model")."""


class Registry(Generic[T]):
    """A named collection filled by a ``@registry.register("name")`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._resolvers: list[Resolver[T]] = []
        self._resolved: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def add_resolver(self, resolver: Resolver[T]) -> None:
        """Resolve unregistered names starting with ``resolver.prefix`` on use, caching each."""
        self._resolvers.append(resolver)

    def _lookup(self, name: str) -> T | None:
        if name in self._items:
            return self._items[name]
        if name in self._resolved:
            return self._resolved[name]
        for resolver in self._resolvers:
            if name.startswith(resolver.prefix):
                obj = resolver.resolve(name[len(resolver.prefix):])
                if obj is not None:
                    self._resolved[name] = obj
                return obj
        return None

    def __getitem__(self, name: str) -> T:
        obj = self._lookup(name)
        if obj is None:
            raise KeyError(self.unknown_message(name))
        return obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        """The registered names (names resolved on use, e.g. ``timm:...``, are not listed)."""
        return sorted(self._items)

    def unknown_message(self, name: str) -> str:
        """'unknown X' for ``name``, with close matches among the registered names or, for a
        resolver's prefix, among the names that resolver knows."""
        for resolver in self._resolvers:
            if name.startswith(resolver.prefix):
                known = [resolver.prefix + n for n in resolver.candidates()]
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                return f"unknown {self.kind} '{name}'.{hint} Valid: {resolver.describe}"
        message = unknown_name_message(self.kind, name, self.names())
        for resolver in self._resolvers:
            if name in resolver.candidates():
                message = f"unknown {self.kind} '{name}'. Did you mean '{resolver.prefix}{name}'? Valid: {', '.join(self.names())}"
        return "; ".join([message, *(f"also {resolver.describe}" for resolver in self._resolvers)])


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """'unknown X' with the closest valid names first, then all of them."""
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(valid)}"
