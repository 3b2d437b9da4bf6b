"""Answer extraction and the safe expression parser (no eval)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from envs.verify import (
    ExprError,
    completion_text,
    extract_number,
    format_number,
    numeric_match,
    parse_expression,
    to_number,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("68", 68),
        ("68<|eos|>", 68),
        (" = 68.", 68),
        ("The answer is 68.", 68),
        ("Answer: 12 apples, not 13", 12),
        ("12 + 56 = 68", 68),
        ("5-3=2", 2),
        ("It is -5", -5),
        ("x = 3.5", Fraction(7, 2)),
        ("so \\boxed{42} and later 7", 42),
        ("\\boxed{3+4=7}", 7),
        ("\\boxed{\\frac{1}{2}}", Fraction(1, 2)),
        ("48+24=72 clips\n#### 72", 72),
        ("#### 1,000", 1000),
        ("the numbers 3, 5, 7", 7),
        ("final answer: -12", -12),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    got = extract_number(text)
    assert got == (None if expected is None else Fraction(expected))


@pytest.mark.parametrize(
    "s, expected",
    [
        ("1,000", 1000),
        ("$5", 5),
        ("3.50", Fraction(7, 2)),
        ("-2", -2),
        ("3/4", Fraction(3, 4)),
        (7, 7),
        ("x", None),
        ("1/0", None),
        (None, None),
        (True, None),
    ],
)
def test_to_number(s, expected):
    assert to_number(s) == expected


def test_numeric_match_and_bad_reference():
    assert numeric_match("The answer is 1,000", "1000")
    assert numeric_match([{"role": "assistant", "content": "72"}], 72)
    assert not numeric_match("71", "72")
    assert not numeric_match("", "72")
    with pytest.raises(ValueError, match="not a number"):
        numeric_match("72", "seventy-two")


def test_completion_text_forms():
    assert completion_text("a") == "a"
    assert completion_text([{"role": "assistant", "content": "b"}]) == "b"
    assert completion_text({"content": "c"}) == "c"
    assert completion_text(None) == ""


@pytest.mark.parametrize(
    "expr, value, literals",
    [
        ("(3+5)*2", 16, [3, 5, 2]),
        ("7/2", Fraction(7, 2), [7, 2]),
        ("10-2-3", 5, [10, 2, 3]),  # left associative
        ("8/4/2", 1, [8, 4, 2]),
        ("2*3+4", 10, [2, 3, 4]),
        ("2+3*4", 14, [2, 3, 4]),
        (" 6 × 7 ", 42, [6, 7]),
        ("9 ÷ 3", 3, [9, 3]),
        ("((((1))))+1", 2, [1, 1]),
        ("1.5*2", 3, [Fraction(3, 2), 2]),
    ],
)
def test_parse_expression_values(expr, value, literals):
    got, lits = parse_expression(expr)
    assert got == value and lits == [Fraction(x) for x in literals]


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "2**10",
        "7//2",
        "1/0",
        "1/(2-2)",
        "a+1",
        "",
        "   ",
        "(1+2",
        "1+2)",
        "1 2",
        "-3",
        "3+",
        "9" * 300,
        "(" * 100 + "1" + ")" * 100,
        "1e5",
        "[1]",
    ],
)
def test_parse_expression_refuses(expr):
    with pytest.raises(ExprError):
        parse_expression(expr)


def test_unary_minus_only_when_allowed():
    assert parse_expression("-3+5", allow_unary=True)[0] == 2
    assert parse_expression("2*-3", allow_unary=True)[0] == -6
    with pytest.raises(ExprError):
        parse_expression("1.5", allow_decimals=False)


def test_format_number():
    assert format_number(Fraction(84)) == "84"
    assert format_number(Fraction(7, 2)) == "3.5"
    assert format_number(Fraction(1, 3)) == "0.333333"
