"""One registry type for everything a user extends (models, benchmarks, tasks, criteria, methods, attribution
methods, recovery routes, metrics, commands): a read-only mapping name -> thing, filled by ``register``.

* ``register(name, thing)`` (or ``@registry.decorator(name)``) refuses an empty or taken name with
  :class:`DuplicateNameError`: a second registration never silently replaces the first;
* ``registry[name]`` refuses an unknown name with :class:`~unpact_mech.core.errors.UnknownNameError`, listing the
  known names;
* ``names()`` lists them, sorted (``list_methods()`` and the other root-level ``list_*`` functions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from unpact_mech.core.errors import UnknownNameError, UnpactError

T = TypeVar("T")
F = TypeVar("F")


class DuplicateNameError(UnpactError):
    """A name registered twice in one registry."""


class Registry(Mapping[str, T], Generic[T]):
    """Registered ``T`` by name, in registration order; ``kind`` names them in errors (``"benchmark"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, thing: T) -> T:
        """Add ``thing`` under ``name`` (a non-empty string not registered yet); returns ``thing``."""
        if not isinstance(name, str) or not name:
            raise UnpactError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._items:
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice: choose another name "
                                     f"(registered {self.kind}s: {', '.join(self.names())})")
        self._items[name] = thing
        return thing

    def decorator(self, name: str, wrap: Callable[[F], T] | None = None) -> Callable[[F], F]:
        """``@registry.decorator(name)``: registers the decorated function (``wrap(fn)`` if given) and returns
        the function unchanged."""

        def deco(fn: F) -> F:
            self.register(name, wrap(fn) if wrap is not None else fn)  # type: ignore[arg-type]
            return fn

        return deco

    def unregister(self, name: str) -> T:
        """Remove ``name`` (a plugin's teardown, a test); returns what it held."""
        thing = self[name]
        del self._items[name]
        return thing

    def __getitem__(self, name: object) -> T:
        if isinstance(name, str) and name in self._items:
            return self._items[name]
        raise UnknownNameError(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                               f"{', '.join(self.names()) or '(none)'}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
