"""Countdown: reach a target with the given numbers and + - * / (each number at most once).

Every generated target is reachable: the generator builds a random expression over the numbers
(exact intermediate results only) and keeps it as ``solution``. The verifier parses the model's
expression with the safe parser in envs/verify.py and checks value and number usage.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from envs.base import TASKS, GeneratedTask, need
from envs.verify import ExprError, last_boxed, parse_expression

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ANSWER_RE = re.compile(r"(?i)answer\s*(?:is\s*:?|:)")


def _show(node: tuple | int, parent: str = "", right: bool = False) -> str:
    """Print an expression tree with only the parentheses precedence needs."""
    if isinstance(node, int):
        return str(node)
    op, a, b = node
    text = f"{_show(a, op)} {op} {_show(b, op, right=True)}"
    if parent and (
        _PREC[op] < _PREC[parent] or (right and _PREC[op] == _PREC[parent] and parent in "-/")
    ):
        return f"({text})"
    return text


def _build(nums: list[int], rng: random.Random) -> tuple[tuple | int, Fraction] | None:
    """A random tree over ``nums`` (in order) whose every intermediate is a positive integer."""
    if len(nums) == 1:
        return nums[0], Fraction(nums[0])
    cut = rng.randint(1, len(nums) - 1)
    left, right = _build(nums[:cut], rng), _build(nums[cut:], rng)
    if left is None or right is None:
        return None
    (ta, a), (tb, b) = left, right
    ops = (
        ["+", "*"] + (["-"] if a > b else []) + (["/"] if b != 0 and a % b == 0 and b != 1 else [])
    )
    op = rng.choice(ops)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]  # b >= 1: all positive
    return (op, ta, tb), value


def extract_expression(text: str) -> str:
    """The model's expression: \\boxed{} content, else after 'Answer:', else the last non-empty
    line; a trailing '= target' is dropped."""
    span = last_boxed(text)
    if span is None:
        marks = list(_ANSWER_RE.finditer(text))
        span = text[marks[-1].end() :] if marks else text
        lines = [ln for ln in span.strip().splitlines() if ln.strip()]
        span = lines[-1] if lines else ""
    return span.split("=", 1)[0].strip().rstrip(".")


@TASKS.register("countdown")
@dataclass
class CountdownTask(GeneratedTask):
    """Options: count (numbers given), max_num (numbers are 1..max_num), max_target,
    use_all (each number exactly once instead of at most once), level (= count)."""

    name: ClassVar[str] = "countdown"
    count: int = 3
    max_num: int = 10
    max_target: int = 100
    use_all: bool = False
    level: int = 0

    def __post_init__(self) -> None:
        if self.level:
            self.count = self.level
        if not 2 <= self.count <= 6:
            raise ValueError(f"task 'countdown': count must be in 2..6, got {self.count}")
        if self.max_num < 2 or self.max_target < 2:
            raise ValueError("task 'countdown': max_num and max_target must be >= 2")

    def sample(self, rng: random.Random) -> dict:
        while True:
            nums = [rng.randint(1, self.max_num) for _ in range(self.count)]
            k = self.count if self.use_all else rng.randint(2, self.count)
            used = rng.sample(nums, k)
            built = _build(used, rng)
            if built is None:
                continue
            tree, value = built
            if value.denominator == 1 and 1 <= value <= self.max_target and value not in nums:
                break
        target = int(value)
        shown = ", ".join(str(x) for x in nums)
        rule = "each exactly once" if self.use_all else "each at most once"
        return {
            "prompt": (
                f"Use {shown} ({rule}) with + - * / to make {target}. "
                "Answer with the expression only."
            ),
            "answer": str(target),
            "numbers": nums,
            "target": target,
            "solution": _show(tree),
            "difficulty": self.count,
        }

    def check(self, expr: str, numbers: list[int], target: int) -> bool:
        try:
            value, literals = parse_expression(expr, allow_unary=False, allow_decimals=False)
        except ExprError:
            return False
        used, avail = Counter(int(x) for x in literals), Counter(int(x) for x in numbers)
        if any(used[x] > avail[x] for x in used):
            return False
        if self.use_all and used != avail:
            return False
        return value == target

    def score(self, completion: str, row: dict) -> float:
        numbers = need(self, row, "numbers")
        target = row.get("target", None)
        target = int(target if target is not None else need(self, row, "answer"))
        return 1.0 if self.check(extract_expression(completion), list(numbers), target) else 0.0

    def sft_target(self, row: dict) -> str:
        return str(row["solution"])
