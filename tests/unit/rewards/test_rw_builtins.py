"""Built-in rewards on right and wrong answers, with values worked out by hand."""

import pytest

from rewards import REWARD_FUNCTIONS
from rewards.builtins import (
    boxed_format,
    exact_match,
    extract_answer,
    format_length,
    last_boxed,
    length,
    math_verify,
    regex_format,
    triangle,
)


def test_registry_has_the_builtins():
    for name in [
        "math_verify",
        "exact_match",
        "boxed_format",
        "regex_format",
        "length",
        "format_length",
    ]:
        assert name in REWARD_FUNCTIONS


def test_math_verify_right_and_wrong():
    completions = [
        "so \\boxed{1/2}",
        "\\boxed{3}",
        "The answer is $\\frac{1}{2}$",
        "no idea",
        "\\boxed{0.5}",
    ]
    answer = ["0.5", "0.5", "0.5", "0.5", None]
    assert math_verify(["p"] * 5, completions, answer=answer) == [1.0, 0.0, 1.0, 0.0, None]


def test_math_verify_latex_gold_and_off_main_thread():
    import threading

    out = {}
    t = threading.Thread(
        target=lambda: out.setdefault(
            "v", math_verify(["p"], ["\\boxed{0.5}"], answer=["\\frac{1}{2}"])
        )
    )
    t.start()
    t.join(60)
    assert out["v"] == [1.0]  # no SIGALRM off the main thread: must not raise


def test_exact_match():
    completions = ["\\boxed{ 42 }", "#### 1,000", "The answer is 7.", "8", "x"]
    answer = ["42", "1000", "7", "9", None]
    assert exact_match(["p"] * 5, completions, answer=answer) == [1.0, 1.0, 1.0, 0.0, None]


def test_boxed_extraction_and_format():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{x}") == "x"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_answer("steps #### 12") == " 12"
    completions = ["\\boxed{3}", "\\boxed{}", "boxed 3", "\\boxed{\\frac{1}{2}}"]
    assert boxed_format(["p"] * 4, completions) == [1.0, 0.0, 0.0, 1.0]


def test_regex_format_factory():
    fn = regex_format(r"Answer: \d+")
    assert fn(["p", "p"], ["...\nAnswer: 12", "Answer: twelve"]) == [1.0, 0.0]
    full = regex_format(r"\d+", full=True)
    assert full(["p", "p"], ["12", "a12"]) == [1.0, 0.0]


def test_length_reward():
    fn = length(target=10)
    assert fn(["p"] * 4, ["a" * 10, "a" * 5, "a" * 20, "a" * 15]) == [1.0, 0.5, 0.0, 0.5]
    # token counts from the pipeline win over characters
    assert fn(["p"] * 2, ["a", "b"], completion_tokens=[10, 0]) == [1.0, 0.0]
    tri = length(target=5, max_len=10)
    assert tri(["p"] * 4, ["a" * 5, "a" * 2 + "b" * 0, "a" * 10, "a" * 0]) == [1.0, 0.4, 0.0, 0.0]
    with pytest.raises(ValueError, match="target"):
        length(target=0)


def test_triangle_by_hand():
    assert [triangle(x, 0.5) for x in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)] == [0, 0.5, 1, 0.5, 0, 0]


def test_format_length_schedule():
    fn = format_length(max_len=100, peak=0.5, switch_step=10, length_weight=1.0)
    c = [
        "\\boxed{1}".ljust(50, "."),  # boxed, x = 0.5
        "no box".ljust(50, "."),  # no format
        "\\boxed{1}".ljust(25, "."),  # boxed, x = 0.25
        "\\boxed{1}".ljust(100, "."),  # boxed, x = 1 (truncated)
    ]
    p = ["q"] * 4
    assert fn(p, c, step=0) == [1.0, 0.0, 1.0, 1.0]  # format only, early
    assert fn(p, c, step=9) == [1.0, 0.0, 1.0, 1.0]
    assert fn(p, c, step=10) == [2.0, 0.0, 1.5, 1.0]  # f · (1 + triangle)
    custom = format_length(max_len=100, switch_step=0, pattern=r"Answer:")
    assert custom(["q"], ["Answer: 3".ljust(50)]) == [2.0]
