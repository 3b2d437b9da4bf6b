"""Files rlpost ships: recipes, compare files and launcher templates, found by one resolver.

The top-level ``launch/`` folder is the source of truth. ``rlpost/_launch`` links to it in the
source tree and is a real copy in an installed rlpost (package data), so ``rlpost train
grpo_tiny`` and ``launch/recipes/grpo_tiny.yaml`` work from any directory, with or without a
checkout.
"""

from __future__ import annotations

from pathlib import Path

LAUNCH = (Path(__file__).resolve().parent / "_launch").resolve()  # the source launch/ in a checkout
KINDS = {"recipe": "recipes", "compare": "compare"}


def launch_file(*parts: str) -> Path:
    """A shipped file under launch/, e.g. ``launch_file("slurm", "rlpost.sbatch.in")``."""
    return LAUNCH.joinpath(*parts)


def find(path: str | Path, kind: str = "") -> Path:
    """``path`` as given when it exists; else ``launch/...`` from the shipped copy; else, for a
    bare name (``grpo_tiny``), the shipped ``launch/recipes/grpo_tiny.yaml`` (or compare/).
    Returns ``path`` unchanged when nothing matches, so the caller's not-found error names it."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    text = str(path)
    candidates = []
    if text.startswith("launch/"):
        candidates.append(LAUNCH / text.removeprefix("launch/"))
    if kind in KINDS and "/" not in text:
        name = text if text.endswith((".yaml", ".yml")) else f"{text}.yaml"
        candidates.append(LAUNCH / KINDS[kind] / name)
    for c in candidates:
        if c.exists():
            return c
    return p


def names(kind: str) -> list[str]:
    """Shipped recipe (or compare file) names, for error messages and docs."""
    return sorted(f.stem for f in (LAUNCH / KINDS[kind]).glob("*.yaml"))
