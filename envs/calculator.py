"""The example tool environment: the model may call a calculator before answering.

Protocol seen by the model: ``<calc>12*7</calc>`` ends its turn (a stop string); the environment
replies ``<result>84</result>`` and the model continues. A turn without a call is the final answer,
scored 1/0 against the row's ``answer`` by the numeric verifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from envs.multiturn import ENVS, StepResult
from envs.verify import ExprError, format_number, numeric_match, parse_expression

CALL_RE = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)
INSTRUCTION = "You may write <calc>expression</calc> to use a calculator."


def _question(row: dict) -> str:
    raw = row.get("raw_prompt", row.get("prompt"))
    if isinstance(raw, list):  # chat messages: the last user turn is the question
        users = [m["content"] for m in raw if m.get("role") == "user"]
        raw = users[-1] if users else raw[-1]["content"]
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"calculator env: row has no prompt text (got {raw!r})")
    return raw


def calculate(expr: str) -> str:
    """What the tool prints: the exact value, or ``error`` for anything it refuses."""
    try:
        value, _ = parse_expression(expr, allow_unary=True, allow_decimals=True)
    except ExprError:
        return "error"
    return format_number(value)


@ENVS.register("calculator")
@dataclass
class CalculatorEnv:
    """Options: max_calls (tool calls allowed per episode; a further call ends the episode
    and is scored as an answer)."""

    name: ClassVar[str] = "calculator"
    stop: ClassVar[list[str]] = ["</calc>"]
    max_calls: int = 4
    calls: int = field(default=0, init=False)
    answer: Any = field(default=None, init=False)
    transcript: list[str] = field(default_factory=list, init=False)

    def reset(self, row: dict) -> str:
        if row.get("answer") is None:
            raise ValueError("calculator env: row has no 'answer' to verify the final answer")
        self.answer, self.calls, self.transcript = row["answer"], 0, []
        return f"{_question(row)}\n{INSTRUCTION}"

    def step(self, message: str) -> StepResult:
        self.transcript.append(message)
        calls = CALL_RE.findall(message)
        if calls and self.calls < self.max_calls:
            self.calls += 1
            return StepResult(f"<result>{calculate(calls[-1])}</result>", 0.0, False)
        text = CALL_RE.sub("", message)  # a number inside a call is not an answer
        reward = 1.0 if numeric_match(text, self.answer) else 0.0
        return StepResult("", reward, True, {"calls": self.calls})

    @staticmethod
    def sft_target(row: dict) -> str:
        """An ideal episode as one text (call, result, answer) for a supervised warm-up."""
        expr = row.get("expression")
        if not expr:
            return str(row["answer"])
        return f"<calc>{expr}</calc><result>{calculate(expr)}</result>{row['answer']}"
