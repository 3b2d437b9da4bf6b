"""Step splitting, terminal detection, and the leaf's outcome reward."""

from __future__ import annotations

import pytest

from envs.base import get_task
from envs.steps import StepEnv, split_steps


@pytest.mark.parametrize(
    "text, steps",
    [
        ("a\nb\nc", ["a\n", "b\n", "c"]),
        ("a\nb\n", ["a\n", "b\n"]),
        ("a\n\nb\n", ["a\n\n", "b\n"]),
        ("\n\na", ["\n\na"]),
        ("a\n \nb", ["a\n \n", "b"]),
        ("", []),
        ("one step", ["one step"]),
    ],
)
def test_split_steps_roundtrip(text, steps):
    assert split_steps(text) == steps
    assert "".join(split_steps(text)) == text


def test_custom_delimiter_and_join():
    env = StepEnv(delimiter=". ")
    steps = env.split("Step 1: add. Step 2: done.")
    assert steps == ["Step 1: add. ", "Step 2: done."]
    assert env.stop == [". "]
    assert StepEnv().join(["x = 1", "y = 2\n", "Answer: 3"]) == "x = 1\ny = 2\nAnswer: 3"
    with pytest.raises(ValueError):
        split_steps("a", "")


def test_terminal_detection():
    env = StepEnv(max_depth=3)
    assert not env.is_terminal("2 + 8 = 10\n", depth=1)
    assert env.is_terminal("2 + 8 = 10\n", depth=1, eos=True)
    assert env.is_terminal("Answer: 16", depth=1)
    assert env.is_terminal("so the answer is 16\n", depth=2)
    assert env.is_terminal("#### 16", depth=1)
    assert env.is_terminal("\\boxed{16}", depth=1)
    assert env.is_terminal("   \n", depth=1)
    assert env.is_terminal("10 + 6 = 16\n", depth=3)
    assert not env.is_terminal("10 + 6 = 16\n", depth=2)


def test_outcome_reward_from_the_task_verifier():
    env = StepEnv.for_task("chain?steps=2")
    row = get_task("chain?steps=2").generate(1, 0, "train")[0]
    good = get_task("chain").sft_target(row)
    assert env.outcome(row["prompt"], good, row) == 1.0
    assert env.outcome(row["prompt"], env.split(good), row) == 1.0
    wrong = good.rsplit(":", 1)[0] + f": {int(row['answer']) + 1}"
    assert env.outcome(row["prompt"], wrong, row) == 0.0
    # countdown needs its numbers column: it arrives from the row
    cd = StepEnv.for_task("countdown")
    crow = {"prompt": "p", "answer": "22", "numbers": [3, 5, 7], "target": 22}
    assert cd.outcome("p", "3*5+7", crow) == 1.0
    with pytest.raises(ValueError, match="reward_fn"):
        StepEnv().outcome("p", "x", {})
