"""GSM8K from the vendored files in envs/data/gsm8k (train → train, test → eval).

Difficulty is the number of calculation lines in the reference solution, so ``max_steps=2``
keeps the easier problems. The prompt asks for the ``#### N`` ending GSM8K solutions use.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from envs.base import TASKS, canonical_split, need
from envs.verify import numeric_match

DATA_DIR = Path(__file__).resolve().parent / "data" / "gsm8k"
FILES = {"train": "train.jsonl", "eval": "test.jsonl"}
_CALC_RE = re.compile(r"<<[^>]*>>")


@lru_cache(maxsize=2)
def _read(split: str) -> tuple[dict, ...]:
    path = DATA_DIR / FILES[split]
    if not path.exists():
        raise FileNotFoundError(f"task 'gsm8k': vendored file {path} is missing")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f):
            raw = json.loads(line)
            worked, _, final = raw["answer"].rpartition("####")
            solution = _CALC_RE.sub("", raw["answer"]).strip()
            steps = [ln for ln in worked.strip().splitlines() if ln.strip()]
            rows.append(
                {
                    "prompt": f"{raw['question']}\nSolve it, then end with '#### N'.",
                    "answer": final.strip().replace(",", ""),
                    "question": raw["question"],
                    "solution": solution,
                    "difficulty": len(steps),
                    "source_index": i,
                }
            )
    return tuple(rows)


@TASKS.register("gsm8k")
@dataclass
class GSM8KTask:
    """Options: min_steps, max_steps (0 = no limit) filter by solution length; level k keeps
    problems of exactly k steps."""

    name: ClassVar[str] = "gsm8k"
    min_steps: int = 0
    max_steps: int = 0
    level: int = 0

    def __post_init__(self) -> None:
        if self.level:
            self.min_steps = self.max_steps = self.level

    def pool(self, split: str) -> list[dict]:
        rows = _read(canonical_split(split))
        return [
            r
            for r in rows
            if r["difficulty"] >= self.min_steps
            and (not self.max_steps or r["difficulty"] <= self.max_steps)
        ]

    def generate(self, n: int, seed: int, split: str) -> list[dict]:
        """A seeded shuffle of the split, without repeats until the pool is used up."""
        pool = self.pool(split)
        if not pool:
            raise ValueError(
                f"task 'gsm8k': no {split} problems with {self.min_steps}..{self.max_steps} steps"
            )
        rng = random.Random(f"gsm8k:{seed}:{canonical_split(split)}")
        out: list[dict] = []
        while len(out) < n:
            order = list(range(len(pool)))
            rng.shuffle(order)
            out += [dict(pool[i]) for i in order[: n - len(out)]]
        return out

    def score(self, completion: str, row: dict) -> float:
        return 1.0 if numeric_match(completion, need(self, row, "answer")) else 0.0

    def reward(self, prompts: list, completions: list, **columns) -> list[float]:
        from envs.base import (
            score_rows,  # would close an import cycle (that module imports this one)
        )

        return score_rows(self, completions, columns)

    def sft_target(self, row: dict) -> str:
        return str(row["solution"])
