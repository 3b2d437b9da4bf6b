"""Multi-digit arithmetic: ``What is 23 + 45?`` with the exact answer as the verifier.

The easiest setting (``digits=1&ops=+``) is learnable by a 10M-parameter model after a short SFT,
which is what the offline demo and the CPU benchmarks need; more digits and ops grade difficulty.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from envs.base import TASKS, GeneratedTask, need
from envs.verify import format_number, numeric_match, parse_expression

OPS = "+-*"


@TASKS.register("arithmetic")
@dataclass
class ArithmeticTask(GeneratedTask):
    """Options: digits (max digits per operand), ops (subset of ``+-*``), terms (operands),
    negative (allow negative results), level (= digits; every task's level k gives rows of
    difficulty k)."""

    name: ClassVar[str] = "arithmetic"
    digits: int = 2
    ops: str = "+-*"
    terms: int = 2
    negative: bool = False
    level: int = 0

    def __post_init__(self) -> None:
        if self.level:
            self.digits = self.level
        if not 1 <= self.digits <= 9:
            raise ValueError(f"task 'arithmetic': digits must be in 1..9, got {self.digits}")
        if not self.ops or any(c not in OPS for c in self.ops):
            raise ValueError(
                f"task 'arithmetic': ops must be a subset of '{OPS}', got {self.ops!r}"
            )
        if not 2 <= self.terms <= 6:
            raise ValueError(f"task 'arithmetic': terms must be in 2..6, got {self.terms}")

    def sample(self, rng: random.Random) -> dict:
        hi = 10**self.digits - 1
        while True:
            nums = [rng.randint(0, hi) for _ in range(self.terms)]
            ops = [rng.choice(self.ops) for _ in range(self.terms - 1)]
            expr = str(nums[0]) + "".join(f" {o} {x}" for o, x in zip(ops, nums[1:]))
            value, _ = parse_expression(expr)
            if self.negative or value >= 0:
                break
        return {
            "prompt": f"What is {expr}? Answer with the number only.",
            "answer": format_number(value),
            "expression": expr,
            "difficulty": self.digits,
        }

    def score(self, completion: str, row: dict) -> float:
        return 1.0 if numeric_match(completion, need(self, row, "answer")) else 0.0

    def sft_target(self, row: dict) -> str:
        return str(row["answer"])
