"""k-step chained arithmetic with graded difficulty (k = the row's ``difficulty``).

"Start with 7. Add 3, then multiply by 2." The ideal completion writes one line per step and ends
with ``Answer: N``, which also makes it the natural task for step-level tree search (one step per
line, terminal at ``Answer:``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from envs.base import TASKS, GeneratedTask, need
from envs.verify import numeric_match


@TASKS.register("chain")
@dataclass
class ChainTask(GeneratedTask):
    """Options: steps (fixed k; 0 = draw k in min_steps..max_steps), min_steps, max_steps,
    max_num (largest number added or subtracted), max_value (cap on intermediate results),
    level (= steps)."""

    name: ClassVar[str] = "chain"
    steps: int = 0
    min_steps: int = 1
    max_steps: int = 4
    max_num: int = 9
    max_value: int = 999
    level: int = 0

    def __post_init__(self) -> None:
        self.steps = self.level or self.steps
        if self.steps:
            self.min_steps = self.max_steps = self.steps
        if not 1 <= self.min_steps <= self.max_steps <= 20:
            raise ValueError(
                f"task 'chain': need 1 <= min_steps <= max_steps <= 20, "
                f"got {self.min_steps}..{self.max_steps}"
            )
        if self.max_num < 1:
            raise ValueError(f"task 'chain': max_num must be >= 1, got {self.max_num}")

    def sample(self, rng: random.Random) -> dict:
        k = rng.randint(self.min_steps, self.max_steps)
        value = start = rng.randint(1, self.max_num)
        phrases, lines = [], []
        for _ in range(k):
            choices = ["+"]
            if value > 1:
                choices.append("-")
            if value * 2 <= self.max_value:
                choices.append("*")
            op = rng.choice(choices)
            if op == "+":
                x = rng.randint(1, self.max_num)
                new, phrase = value + x, f"add {x}"
            elif op == "-":
                x = rng.randint(1, min(self.max_num, value - 1))  # results stay >= 1
                new, phrase = value - x, f"subtract {x}"
            else:
                x = rng.choice([m for m in (2, 3) if value * m <= self.max_value])
                new, phrase = value * x, f"multiply by {x}"
            lines.append(f"{value} {op} {x} = {new}")
            phrases.append(phrase)
            value = new
        prompt = (
            f"Start with {start}. {', then '.join(phrases).capitalize()}. "
            "One step per line, then 'Answer: N'."
        )
        return {
            "prompt": prompt,
            "answer": str(value),
            "steps": lines,
            "difficulty": k,
        }

    def score(self, completion: str, row: dict) -> float:
        return 1.0 if numeric_match(completion, need(self, row, "answer")) else 0.0

    def sft_target(self, row: dict) -> str:
        return "\n".join(list(row["steps"]) + [f"Answer: {row['answer']}"])
