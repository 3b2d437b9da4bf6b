"""Name → implementation tables, so users can plug in new kinds without editing the library.

Same spelling as :class:`rlpost.registry.Registry` (``register`` / ``add`` / ``get`` / ``names``),
plus ``register(name, obj)`` and refusal of silent overwrites.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of implementations whose lookup errors list the known names."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Add ``obj`` under ``name`` (or decorate); refuses to overwrite silently."""

        def add(item: T) -> T:
            if name in self._items and not overwrite:
                raise KeyError(f"{self.what} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Non-decorator spelling of :meth:`register`."""
        return self.register(name, obj, overwrite=overwrite)

    def get(self, name: str) -> T:
        """Look ``name`` up (or load a user's ``file.py:Name``); a typo lists the valid names."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            from rlpost.registry import load_object  # the project-wide plug-in loader

            return load_object(name)
        known = ", ".join(sorted(self._items)) or "(none)"
        raise KeyError(f"unknown {self.what} {name!r}; known: {known}")

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"
