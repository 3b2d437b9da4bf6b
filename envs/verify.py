"""Answer extraction and safe arithmetic shared by the task verifiers and the calculator tool.

Small models format answers loosely ("68", "= 68.", "The answer is 68", "\\boxed{68}", "#### 68"),
so extraction prefers explicit markers and falls back to the last number. Expressions written by the
model are parsed by a tiny recursive-descent parser over exact fractions: no ``eval``, no names,
no exponent, bounded length and nesting, so a completion can never run code or blow up memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

# A number: optional sign (not after a word or ")" where "-" is an operator), thousands commas,
# decimals. The digit lookbehind stops a match from starting in the middle of another number.
NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_MARK_RE = re.compile(r"(?i)(?:final\s+)?answer\s*(?:is\s*:?|:|=)")
_FRAC_RE = re.compile(r"^\\d?frac\{(-?\d+)\}\{(-?\d+)\}$")
MAX_EXPR_CHARS = 200
MAX_DEPTH = 32


class ExprError(ValueError):
    """An expression the safe parser refuses (bad syntax, a forbidden character, x/0, too long)."""


def completion_text(completion: Any) -> str:
    """Completions arrive as text or, in chat form, as a list of messages: use the last content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return "" if completion is None else str(completion)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def to_number(s: Any) -> Fraction | None:
    """'1,000', '$5', '3.50', '-2', '3/4', '\\frac{1}{2}', 7 → an exact Fraction, else None."""
    if isinstance(s, bool) or s is None:
        return None
    if isinstance(s, (int, Fraction)):
        return Fraction(s)
    if isinstance(s, float):
        return Fraction(str(s))
    t = str(s).strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    m = _FRAC_RE.match(t)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den else None
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            return Fraction(Fraction(a), Fraction(b)) if Fraction(b) else None
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers(text: str) -> list[str]:
    return NUMBER_RE.findall(text)


def final_answer_span(text: str) -> str | None:
    """The text an explicit marker points at: last \\boxed{}, after the last '####', or after the
    last 'answer is' / 'Answer:'. None when the model used no marker."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1]
    marks = list(_ANSWER_MARK_RE.finditer(text))
    if marks:
        return text[marks[-1].end() :]
    return None


def extract_number(text: str) -> Fraction | None:
    """The model's final numeric answer: the marked span's number if any, else the last number."""
    span = final_answer_span(text)
    if span is not None:
        whole = to_number(span)
        if whole is not None:
            return whole
        nums = _numbers(span)
        if nums:
            # After a marker the answer comes first ("#### 72 apples"); inside \boxed{} a worked
            # line ends with it ("3+4=7"): take the last number there.
            pick = nums[-1] if last_boxed(text) is not None else nums[0]
            return to_number(pick)
    nums = _numbers(text)
    return to_number(nums[-1]) if nums else None


def numeric_match(completion: Any, reference: Any) -> bool:
    """True when the completion's final number equals the reference exactly (as fractions)."""
    ref = to_number(reference)
    if ref is None:
        raise ValueError(f"reference answer {reference!r} is not a number")
    got = extract_number(completion_text(completion))
    return got is not None and got == ref


# ------------------------------------------------------------------------------- safe parser
_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|(\S))")
_ALIASES = {"×": "*", "x": "*", "X": "*", "·": "*", "÷": "/", "−": "-", "–": "-"}


def _tokenize(expr: str, allow_decimals: bool) -> list[str]:
    if len(expr) > MAX_EXPR_CHARS:
        raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters")
    tokens: list[str] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m:  # only trailing whitespace left
            break
        pos = m.end()
        num, sym = m.group(1), m.group(2)
        if num is not None:
            if "." in num and not allow_decimals:
                raise ExprError(f"decimal number {num} not allowed")
            tokens.append(num)
            continue
        sym = _ALIASES.get(sym, sym)
        if sym not in "+-*/()":
            raise ExprError(f"character {sym!r} not allowed")
        tokens.append(sym)
    if not tokens:
        raise ExprError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], allow_unary: bool) -> None:
        self.t = tokens
        self.i = 0
        self.allow_unary = allow_unary
        self.literals: list[Fraction] = []

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise ExprError(f"nesting deeper than {MAX_DEPTH}")
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise ExprError("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.peek()
        if tok is None:
            raise ExprError("expression ends early")
        if tok == "(":
            self.take()
            value = self.expr(depth + 1)
            if self.peek() != ")":
                raise ExprError("missing ')'")
            self.take()
            return value
        if tok == "-" and self.allow_unary:
            self.take()
            return -self.factor(depth + 1)
        if tok[0].isdigit():
            self.take()
            value = Fraction(tok)
            self.literals.append(value)
            return value
        raise ExprError(f"unexpected {tok!r}")


def parse_expression(
    expr: str, allow_unary: bool = False, allow_decimals: bool = True
) -> tuple[Fraction, list[Fraction]]:
    """Evaluate ``+ - * / ( )`` over numbers exactly; returns (value, literals in order of use).

    Raises ExprError on anything else, including names, ``**``, ``//`` and division by zero.
    """
    parser = _Parser(_tokenize(expr, allow_decimals), allow_unary)
    value = parser.expr(0)
    if parser.peek() is not None:
        raise ExprError(f"unexpected {parser.peek()!r} after a complete expression")
    return value, parser.literals


def format_number(x: Fraction) -> str:
    """Integers as integers, other values as a short decimal (what a calculator would show)."""
    if x.denominator == 1:
        return str(x.numerator)
    return f"{float(x):.6g}"
