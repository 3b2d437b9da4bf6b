"""Built-in reward functions (TRL signature), registered by name in ``REWARD_FUNCTIONS``.

Rows without a reference answer score None ("does not apply"), so a verifier can share a config
with other rewards on mixed data. Lengths are in characters unless the pipeline passes a
``completion_tokens`` column (token counts per row), which the length rewards then prefer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rewards.base import register_reward

RewardFn = Callable[..., list[float | None]]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None when there is none."""
    found = None
    for m in _BOXED.finditer(text):
        depth, start = 1, m.end()
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:j]
                    break
    return found


def extract_answer(text: str) -> str:
    """The answer a completion commits to: last boxed, else after '####', else after 'answer is'."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1]
    m = list(re.finditer(r"answer is[:\s]*", text, re.I))
    if m:
        return text[m[-1].end() :].split("\n", 1)[0]
    return text


def normalize_answer(s: str) -> str:
    """Loose string equality: case, spaces, surrounding $, a trailing period, digit commas."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"(?<=\d),(?=\d{3})", "", s)
    s = re.sub(r"\s+", " ", s).lower()
    return s.rstrip(".").strip()


def _answers(answer: Any, n: int) -> Sequence[Any]:
    if answer is None:
        return [None] * n
    if isinstance(answer, str):
        return [answer] * n
    return list(answer)


def _lengths(completions: list[str], completion_tokens: Any) -> list[float]:
    if completion_tokens is not None:
        return [float(x) for x in completion_tokens]
    return [float(len(c)) for c in completions]


@register_reward("math_verify")
def math_verify(
    prompts: list[str], completions: list[str], answer: Any = None, **_: Any
) -> list[float | None]:
    """1 if the completion's final answer equals the reference mathematically (math-verify), else 0."""
    from math_verify import parse, verify

    # math-verify's own timeout uses SIGALRM, which exists only on the main thread; elsewhere the
    # worker pool's per-call timeout is the guard.
    t = 5 if threading.current_thread() is threading.main_thread() else 0
    out: list[float | None] = []
    for c, a in zip(completions, _answers(answer, len(completions))):
        if a is None or str(a).strip() == "":
            out.append(None)
            continue
        gold = parse(str(a), parsing_timeout=t) or parse(f"${a}$", parsing_timeout=t)
        pred = parse(c, parsing_timeout=t)
        ok = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=t)
        out.append(1.0 if ok else 0.0)
    return out


@register_reward("exact_match")
def exact_match(
    prompts: list[str], completions: list[str], answer: Any = None, **_: Any
) -> list[float | None]:
    """1 if the extracted answer equals the reference after light normalisation, else 0."""
    out: list[float | None] = []
    for c, a in zip(completions, _answers(answer, len(completions))):
        if a is None:
            out.append(None)
        else:
            out.append(float(normalize_answer(extract_answer(c)) == normalize_answer(str(a))))
    return out


@register_reward("boxed_format")
def boxed_format(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """1 if the completion puts a non-empty answer in ``\\boxed{}``, else 0."""
    return [float(bool((last_boxed(c) or "").strip())) for c in completions]


@register_reward("regex_format", factory=True)
def regex_format(
    pattern: str = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", full: bool = False
) -> RewardFn:
    """Make a reward that is 1 when ``pattern`` matches the completion (DOTALL; search or full)."""
    rx = re.compile(pattern, re.S)
    match = rx.fullmatch if full else rx.search

    def regex_format_reward(prompts: Any, completions: list[str], **_: Any) -> list[float | None]:
        return [float(match(c) is not None) for c in completions]

    return regex_format_reward


def triangle(x: float, peak: float) -> float:
    """0 at x = 0, 1 at x = peak, 0 again at x ≥ 1: discourages both too short and too long."""
    if x <= 0 or x >= 1:
        return 0.0
    return x / peak if x <= peak else (1.0 - x) / (1.0 - peak)


@register_reward("length", factory=True)
def length(target: float = 256.0, max_len: float = 0.0) -> RewardFn:
    """Make a reward for closeness to ``target`` length: max(0, 1 − |n − target| / target).

    With ``max_len`` > 0 the shape is instead :func:`triangle` of n / max_len peaking at
    target / max_len.
    """
    if target <= 0:
        raise ValueError(f"length: target must be > 0, got {target}")

    def length_reward(
        prompts: Any, completions: list[str], completion_tokens: Any = None, **_: Any
    ) -> list[float | None]:
        out: list[float | None] = []
        for n in _lengths(completions, completion_tokens):
            if max_len > 0:
                out.append(triangle(n / max_len, min(target / max_len, 1.0)))
            else:
                out.append(max(0.0, 1.0 - abs(n - target) / target))
        return out

    return length_reward


@register_reward("format_length", factory=True)
def format_length(
    max_len: float = 1024.0,
    peak: float = 0.5,
    switch_step: int = 50,
    length_weight: float = 1.0,
    pattern: str = "",
) -> RewardFn:
    """Make the label-free surrogate reward (Xin et al. 2025, "Surrogate Signals from Format and Length").

    f = 1 when the answer is well formed (a boxed answer, or ``pattern`` matches), else 0.
    Before ``switch_step`` the reward is f (format-only helps early); from then on it is
    f · (1 + length_weight · triangle(n / max_len, peak)), so only well-formed answers earn the
    length bonus, which peaks at peak·max_len and vanishes for truncated ones. Shapes and
    constants are our choice; the paper describes the two phases, not one formula we could copy.
    """
    if max_len <= 0 or not 0 < peak < 1:
        raise ValueError(f"format_length: need max_len > 0 and 0 < peak < 1, got {max_len}, {peak}")
    rx = re.compile(pattern, re.S) if pattern else None

    def well_formed(c: str) -> bool:
        return bool(rx.search(c)) if rx else bool((last_boxed(c) or "").strip())

    def format_length_reward(
        prompts: Any,
        completions: list[str],
        step: int = 0,
        completion_tokens: Any = None,
        **_: Any,
    ) -> list[float | None]:
        fmt = [float(well_formed(c)) for c in completions]
        if step < switch_step:
            return list(fmt)
        lens = _lengths(completions, completion_tokens)
        return [f * (1.0 + length_weight * triangle(n / max_len, peak)) for f, n in zip(fmt, lens)]

    return format_length_reward
