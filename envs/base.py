"""The task protocol, the task registry, and option parsing shared by tasks and environments.

A task is a prompt generator plus its verifier. Generation runs offline and is a pure function of
``(options, n, seed, split)``, so the same recipe always trains and evaluates on the same rows.
Tasks take options in their name, ``arithmetic?digits=1&ops=+``, so a difficulty level is one
string in a recipe or on the command line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
import typing
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from envs.verify import completion_text
from rlpost.registry import Registry

SPLITS = {"train": "train", "eval": "eval", "test": "eval", "validation": "eval"}
BUILTIN_MODULES = ("envs.arithmetic", "envs.countdown", "envs.chain", "envs.gsm8k")


@runtime_checkable
class Task(Protocol):
    name: str

    def generate(self, n: int, seed: int, split: str) -> list[dict]:
        """n rows with at least ``prompt`` (text) and ``answer`` (str), deterministic per seed."""
        ...

    def reward(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        """TRL reward-function signature; ``columns`` are the rows' other fields as lists."""
        ...

    def sft_target(self, row: dict) -> str:
        """The ideal completion of a row, for a supervised warm-up."""
        ...


TASKS: Registry[type] = Registry("task")


def parse_options(spec: str) -> tuple[str, dict[str, str]]:
    """``name?a=1&b=+`` → ``("name", {"a": "1", "b": "+"})``; no URL decoding, so '+' stays '+'."""
    name, _, query = spec.partition("?")
    opts: dict[str, str] = {}
    for part in query.split("&") if query else []:
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"'{spec}': option '{part}' must look like key=value")
        opts[key.strip()] = value.strip()
    return name.strip(), opts


def _convert(what: str, key: str, raw: str, tp: Any) -> Any:
    try:
        if tp is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{what}: option {key}={raw!r}: expected {tp.__name__}") from None
    return raw


def build_with_options(cls: Any, opts: dict[str, str], what: str) -> Any:
    """Instantiate a dataclass (or any callable) from string options, typed by its fields."""
    if not dataclasses.is_dataclass(cls):
        return cls(**opts)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, raw in opts.items():
        if key not in known:
            raise ValueError(
                f"{what}: unknown option '{key}' (known: {', '.join(sorted(known)) or 'none'})"
            )
        kwargs[key] = _convert(what, key, raw, hints[key])
    return cls(**kwargs)


def load_builtins() -> None:
    """Import the built-in task modules so they register themselves (cheap, idempotent)."""
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def get_task(spec: str) -> Task:
    """A task instance from ``name``, ``name?opt=v&...`` or ``file.py:Class?opt=v``."""
    load_builtins()
    name, opts = parse_options(spec.removeprefix("task:"))
    cls = TASKS.get(name)
    return build_with_options(cls, opts, f"task '{name}'")


def task_names() -> list[str]:
    load_builtins()
    return TASKS.names()


def canonical_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    return SPLITS[split]


class GeneratedTask:
    """Base for synthetic tasks: held-out eval by hashing each problem into a split bucket.

    ``sample(rng)`` draws one row. A row belongs to the eval split when the CRC of its prompt falls
    in the first ``eval_buckets`` of 100 buckets, so eval problems never appear in train, even for a
    small problem space (1-digit addition), and both splits stay deterministic per seed.
    """

    name: ClassVar[str] = "generated"
    eval_buckets: ClassVar[int] = 10

    def sample(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def score(self, completion: str, row: dict) -> float:
        raise NotImplementedError

    def sft_target(self, row: dict) -> str:
        raise NotImplementedError

    def in_split(self, row: dict, split: str) -> bool:
        bucket = zlib.crc32(row["prompt"].encode()) % 100
        return (bucket < self.eval_buckets) == (split == "eval")

    def generate(self, n: int, seed: int, split: str) -> list[dict]:
        """n rows of the split. Eval rows are distinct problems (a repeat would count one problem
        twice in every accuracy); a space with fewer than n eval problems gives all it has."""
        split = canonical_split(split)
        rng = random.Random(f"{self.name}:{seed}:{split}")
        rows: list[dict] = []
        seen: set[str] = set()
        tries = stale = 0
        limit = 200 * n + 1000
        while len(rows) < n:
            row = self.sample(rng)
            tries += 1
            stale += 1
            fresh = split != "eval" or row["prompt"] not in seen
            # A space too small to have rows in this split: take what comes rather than loop.
            if fresh and (tries > limit or self.in_split(row, split)):
                rows.append(row)
                seen.add(row["prompt"])
                stale = 0
            if split == "eval" and rows and stale > 20 * n + 1000:
                break  # every eval problem of the space is taken
        return rows

    def reward(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return score_rows(self, completions, columns)


def score_rows(task: Any, completions: list[Any], columns: dict[str, list[Any]]) -> list[float]:
    """Call ``task.score(text, row)`` per completion with that row's columns."""
    for key, values in columns.items():
        if isinstance(values, (list, tuple)) and len(values) != len(completions):
            raise ValueError(
                f"task '{task.name}' reward: column '{key}' has {len(values)} values for "
                f"{len(completions)} completions"
            )
    out = []
    for i, comp in enumerate(completions):
        row = {
            k: (v[i] if isinstance(v, (list, tuple)) else v)
            for k, v in columns.items()
            if v is not None
        }
        out.append(float(task.score(completion_text(comp), row)))
    return out


def need(task: Any, row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise ValueError(
            f"task '{task.name}' reward needs column '{key}' (got columns: {', '.join(row)})"
        )
    return row[key]


def make_task_file(
    name: str, out_dir: str | Path, n: int = 2000, seed: int = 0, eval_n: int = 200
) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` of a task; returns their paths by split."""
    task = get_task(name)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, size in (("train", n), ("eval", eval_n)):
        path = out / f"{split}.jsonl"
        rows = task.generate(size, seed, split)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths[split] = path
    return paths


RewardFn = Callable[..., list[float]]
