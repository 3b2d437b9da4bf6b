"""Step-level view of a response, for tree search (MCTS-DPO).

A response is a sequence of steps, each ending at a delimiter (default a newline). A node of the
search tree is the prompt plus a prefix of steps; a leaf is a terminal step (the model ended with
eos, wrote its final answer, or the tree reached its max depth), scored by the task's verifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FINAL_ANSWER_RE = r"(?i)(answer\s*(is|:)|####|\\boxed\{)"


def split_steps(text: str, delimiter: str = "\n") -> list[str]:
    """Split into steps that keep their delimiter, so ``"".join(steps) == text``.

    Blank pieces (runs of delimiters, whitespace) join the previous step, or the next one at the
    start of the text: every step has content.
    """
    if not delimiter:
        raise ValueError("split_steps: delimiter must not be empty")
    pieces = [p + delimiter for p in text.split(delimiter)]
    pieces[-1] = pieces[-1][: -len(delimiter)]  # the text did not end with this delimiter
    out: list[str] = []
    lead = ""
    for piece in pieces:
        if piece.strip():
            out.append(lead + piece)
            lead = ""
        elif out:
            out[-1] += piece
        else:
            lead += piece
    if lead:  # nothing but blanks
        out.append(lead)
    return out


@dataclass
class StepEnv:
    """Stepping rules for one task: delimiter, terminal test, and the leaf's outcome reward.

    ``reward_fn`` has the TRL reward signature (``fn(prompts, completions, **columns)``); a task's
    ``reward`` method fits, see ``for_task``.
    """

    reward_fn: Callable[..., list[Any]] | None = None
    delimiter: str = "\n"
    max_depth: int = 4
    final_pattern: str = FINAL_ANSWER_RE

    def __post_init__(self) -> None:
        if not self.delimiter:
            raise ValueError("StepEnv: delimiter must not be empty")
        if self.max_depth < 1:
            raise ValueError(f"StepEnv: max_depth must be >= 1, got {self.max_depth}")
        self._final = re.compile(self.final_pattern)

    @classmethod
    def for_task(cls, spec: str, **kwargs: Any) -> StepEnv:
        from envs.base import get_task  # would close an import cycle (that module imports this one)

        return cls(reward_fn=get_task(spec).reward, **kwargs)

    @property
    def stop(self) -> list[str]:
        """Stop strings that end one step's generation."""
        return [self.delimiter]

    def split(self, text: str) -> list[str]:
        return split_steps(text, self.delimiter)

    def join(self, steps: list[str]) -> str:
        """Concatenate steps, adding a delimiter where a non-final step lacks one."""
        parts = [
            s if s.endswith(self.delimiter) or i == len(steps) - 1 else s + self.delimiter
            for i, s in enumerate(steps)
        ]
        return "".join(parts)

    def is_final_answer(self, step: str) -> bool:
        return bool(self._final.search(step))

    def is_terminal(self, step: str, depth: int, eos: bool = False) -> bool:
        """A node ends the episode when the step ended with eos, states the final answer, is
        empty (the model had nothing more to say), or sits at ``max_depth`` (1 = first step)."""
        return eos or not step.strip() or self.is_final_answer(step) or depth >= self.max_depth

    def outcome(self, prompt: str, response: str | list[str], row: dict) -> float:
        """The verifier's reward for a complete response at a leaf (0.0 when it gives none)."""
        if self.reward_fn is None:
            raise ValueError("StepEnv.outcome: no reward_fn (use StepEnv.for_task(name))")
        text = response if isinstance(response, str) else self.join(response)
        skip = {"prompt", "prompt_ids", "completion"}
        columns = {k: [v] for k, v in row.items() if k not in skip}
        scores = self.reward_fn([prompt], [text], **columns)
        return float(scores[0]) if scores and scores[0] is not None else 0.0
