"""Name → object registries for the plug-in families, and loading a user's ``file.py:Name``."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of plug-ins (algorithms, rewards, tasks, environments, objective terms).

    ``get`` also accepts ``path/to/file.py:Name`` or ``pkg.mod:Name``; a typo names the closest
    known entry and lists them all. Registering a different object under a taken name is refused
    unless ``overwrite=True``: two plug-ins silently shadowing each other is a bug.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str | None = None, obj: T | None = None, *, overwrite: bool = False):
        """Add ``obj`` under ``name`` (default: its ``name`` or ``__name__``), or decorate."""

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or item.__name__  # type: ignore[attr-defined]
            old = self._items.get(key)
            if old is not None and old is not item and not overwrite:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Non-decorator spelling of :meth:`register`."""
        return self.register(name, obj, overwrite=overwrite)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_object(name)
        raise KeyError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The one-line refusal for ``name``: closest match, then every known name."""
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(self.names()) or "(none)"
        return f"unknown {self.kind} '{name}'{hint} (known: {known}; or give file.py:Name)"


def load_object(spec: str) -> Any:
    """Load ``file.py:Name`` (a path) or ``package.module:Name``; errors name the file and symbol."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"'{spec}' must look like file.py:Name or package.module:Name")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"{spec}: file {path} does not exist")
        mod_name = f"rlpost_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
        module = sys.modules.get(mod_name)
        if module is None:
            s = importlib.util.spec_from_file_location(mod_name, path)
            assert s and s.loader
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            s.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, attr):
        raise AttributeError(f"{spec}: {target} has no '{attr}'")
    return getattr(module, attr)


def absolute_spec(spec: str) -> str:
    """Make a ``file.py:Name`` spec absolute so Ray actors in other dirs can load it."""
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return spec
