"""Algorithm plug-ins. Importing this package registers every built-in module by name."""

import importlib
import pkgutil

from algorithms.base import ALGORITHMS, Algorithm, Needs, build_algorithm, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ALGORITHMS", "Algorithm", "Needs", "build_algorithm", "register"]
