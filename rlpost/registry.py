"""Name → object registries for the plug-in families, and loading a user's ``file.py:Name``."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of plug-ins; ``get`` also accepts ``path/to/file.py:Name`` or ``pkg.mod:Name``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self._items[name or getattr(obj, "name", None) or obj.__name__] = obj  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self._items[name] = obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_object(name)
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(
            f"unknown {self.kind} '{name}'{hint} (known: {', '.join(self.names())}; "
            f"or give file.py:Name)"
        )


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
