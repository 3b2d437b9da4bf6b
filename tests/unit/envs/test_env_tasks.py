"""Task generators are deterministic per seed with held-out eval; verifiers score right/wrong/junk."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from envs.base import get_task, make_task_file, parse_options, task_names
from envs.countdown import CountdownTask
from rlpost.commands.make_task import add_cli

SPECS = [
    "arithmetic",
    "arithmetic?digits=1&ops=+",
    "arithmetic?digits=3&ops=*&terms=3",
    "countdown",
    "countdown?count=4&use_all=true",
    "chain",
    "chain?steps=3",
    "gsm8k",
    "gsm8k?max_steps=2",
]


def _cols(rows):
    return {k: [r.get(k) for r in rows] for k in rows[0]}


def test_builtin_names():
    assert {"arithmetic", "countdown", "chain", "gsm8k"} <= set(task_names())


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_per_seed_and_held_out(spec):
    task = get_task(spec)
    a, b, c = (
        task.generate(60, 0, "train"),
        task.generate(60, 0, "train"),
        task.generate(60, 1, "train"),
    )
    assert a == b
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]
    ev = task.generate(30, 0, "eval")
    assert len(a) == 60 and len(ev) == (10 if spec == "arithmetic?digits=1&ops=+" else 30)
    train_prompts = {r["prompt"] for r in task.generate(500, 0, "train")}
    assert not train_prompts & {r["prompt"] for r in ev}
    for r in a + ev:
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert isinstance(r["answer"], str) and r["answer"]
        assert isinstance(r["difficulty"], int)
    json.dumps(a)  # rows are plain JSON (make-task writes them)


def test_eval_rows_are_distinct_problems_and_a_small_space_gives_all_of_its_own():
    big = get_task("countdown?count=2&max_num=40").generate(250, 0, "eval")
    assert len({r["prompt"] for r in big}) == len(big) == 250
    assert big[:100] == get_task("countdown?count=2&max_num=40").generate(100, 0, "eval")
    # 1-digit addition: 100 problems, 10 of them held out; repeats and train rows never fill in
    small = get_task("arithmetic?digits=1&ops=+")
    ev = small.generate(64, 0, "eval")
    assert len({r["prompt"] for r in ev}) == len(ev) == 10
    assert all(small.in_split(r, "eval") for r in ev)


@pytest.mark.parametrize("spec", SPECS)
def test_verifier_right_wrong_malformed(spec):
    task = get_task(spec)
    rows = task.generate(40, 3, "train")
    cols = _cols(rows)
    prompts = cols["prompt"]
    assert task.reward(prompts, [task.sft_target(r) for r in rows], **cols) == [1.0] * 40
    wrong = [f"The answer is {int(r['answer']) + 1}." for r in rows]
    assert task.reward(prompts, wrong, **cols) == [0.0] * 40
    junk = ["", "I don't know", "\\boxed{", "<|eos|>"] * 10
    assert task.reward(prompts, junk, **cols) == [0.0] * 40
    # Chat-form completions are accepted too.
    chat = [[{"role": "assistant", "content": task.sft_target(r)}] for r in rows]
    assert task.reward(prompts, chat, **cols) == [1.0] * 40


def test_reward_column_errors():
    task = get_task("arithmetic")
    with pytest.raises(ValueError, match="column 'answer'"):
        task.reward(["p"], ["1"])
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 1"):
        task.reward(["p"], ["1"], answer=["1", "2"])


def test_arithmetic_options_shape_the_problems():
    rows = get_task("arithmetic?digits=1&ops=+").generate(200, 0, "train")
    for r in rows:
        m = re.fullmatch(r"What is (\d) \+ (\d)\? Answer with the number only\.", r["prompt"])
        assert m, r["prompt"]
        assert int(r["answer"]) == int(m.group(1)) + int(m.group(2))
    rows = get_task("arithmetic?digits=2&ops=-").generate(200, 0, "train")
    assert all(int(r["answer"]) >= 0 for r in rows)  # negative=false by default
    rows = get_task("arithmetic?digits=2&ops=-&negative=1").generate(200, 0, "train")
    assert any(int(r["answer"]) < 0 for r in rows)
    r = get_task("arithmetic?terms=3&ops=*&digits=1").generate(1, 0, "train")[0]
    a, b, c = (int(x) for x in r["expression"].split(" * "))
    assert int(r["answer"]) == a * b * c


def test_option_errors():
    with pytest.raises(ValueError, match="unknown option 'digit'.*digits"):
        get_task("arithmetic?digit=2")
    with pytest.raises(ValueError, match="digits='two': expected int"):
        get_task("arithmetic?digits=two")
    with pytest.raises(ValueError, match="ops must be a subset"):
        get_task("arithmetic?ops=/")
    with pytest.raises(ValueError, match="key=value"):
        get_task("arithmetic?digits")
    with pytest.raises(KeyError, match="did you mean 'chain'"):
        get_task("chian")


def test_parse_options_keeps_plus():
    assert parse_options("arithmetic?digits=2&ops=+-") == (
        "arithmetic",
        {"digits": "2", "ops": "+-"},
    )
    assert parse_options("task?") == ("task", {})
    assert parse_options("my.py:T?a=1") == ("my.py:T", {"a": "1"})


def test_chain_steps_are_graded_and_correct():
    rows = get_task("chain?min_steps=2&max_steps=5").generate(300, 0, "train")
    assert {r["difficulty"] for r in rows} == {2, 3, 4, 5}
    for r in rows:
        lines = get_task("chain").sft_target(r).splitlines()
        assert len(lines) == r["difficulty"] + 1 and lines[-1] == f"Answer: {r['answer']}"
        prev = None
        for line in lines[:-1]:
            a, op, b, _, c = line.split()
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op] and c >= 1
            assert prev is None or a == prev
            prev = c
        assert prev == int(r["answer"])
    assert {r["difficulty"] for r in get_task("chain?steps=3").generate(50, 0, "eval")} == {3}


def test_countdown_rows_and_checker():
    task = get_task("countdown")
    for r in task.generate(100, 0, "train"):
        assert len(r["numbers"]) == 3 and all(1 <= x <= 10 for x in r["numbers"])
        assert 1 <= r["target"] <= 100 and r["answer"] == str(r["target"])
    t = CountdownTask()
    row = {"numbers": [3, 5, 7], "target": 22}
    ok = ["3*5+7", "3 * 5 + 7 = 22", "\\boxed{7+3*5}", "Answer: (5*3)+7", "I think\n3*5+7."]
    bad = ["3*5+7+7", "22", "3*5+8", "3^5", "__import__('os')", "", "5*3+7*1", "-3+25"]
    assert [t.score(x, row) for x in ok] == [1.0] * len(ok)
    assert [t.score(x, row) for x in bad] == [0.0] * len(bad)
    exact = CountdownTask(use_all=True)
    assert exact.score("3*5+7", {"numbers": [3, 5, 7, 1], "target": 22}) == 0.0
    assert exact.score("3*5+7*1", {"numbers": [3, 5, 7, 1], "target": 22}) == 1.0
    assert t.score("(7-5)/2*3", {"numbers": [2, 3, 5, 7], "target": 3}) == 1.0  # exact fractions


def test_countdown_solutions_have_minimal_parentheses():
    sols = [r["solution"] for r in get_task("countdown?count=4").generate(300, 0, "train")]
    assert any("(" in s for s in sols) and any("(" not in s for s in sols)
    assert not any(s.startswith("(") and s.endswith(")") and s.count("(") == 1 for s in sols)


def test_gsm8k_answers_and_filter():
    task = get_task("gsm8k")
    pool = task.pool("train")
    assert len(pool) == 7473 and len(task.pool("eval")) == 1319
    first = pool[0]
    assert first["answer"] == "72" and first["solution"].endswith("#### 72")
    assert "<<" not in first["solution"] and first["difficulty"] == 2
    easy = get_task("gsm8k?max_steps=2").generate(100, 0, "train")
    assert all(r["difficulty"] <= 2 for r in easy)
    rows = task.generate(500, 0, "train")
    assert len({r["source_index"] for r in rows}) == 500  # no repeats within the pool


def test_user_task_by_path(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\n"
        "class Echo:\n"
        "    name = 'echo'\n"
        "    word: str = 'hi'\n"
        "    def generate(self, n, seed, split):\n"
        "        return [{'prompt': f'Say {self.word}', 'answer': self.word}] * n\n"
        "    def reward(self, prompts, completions, **cols):\n"
        "        return [float(c == a) for c, a in zip(completions, cols['answer'])]\n"
        "    def sft_target(self, row):\n"
        "        return row['answer']\n"
    )
    task = get_task(f"{path}:Echo?word=yo")
    assert task.generate(2, 0, "train")[0] == {"prompt": "Say yo", "answer": "yo"}


def test_make_task_file_and_cli(tmp_path, capsys):
    paths = make_task_file("chain?steps=2", tmp_path / "a", n=20, seed=4, eval_n=5)
    lines = paths["train"].read_text().splitlines()
    assert len(lines) == 20 and len(paths["eval"].read_text().splitlines()) == 5
    assert [json.loads(x) for x in lines] == get_task("chain?steps=2").generate(20, 4, "train")

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["make-task", "countdown", "--out", str(tmp_path / "b"), "--n", "8"])
    assert args.func(args) == 0
    assert len((tmp_path / "b" / "train.jsonl").read_text().splitlines()) == 8
    assert len((tmp_path / "b" / "eval.jsonl").read_text().splitlines()) == 200
    bad = parser.parse_args(["make-task", "nope", "--out", str(tmp_path / "c")])
    assert bad.func(bad) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_task_file_roundtrip_through_load_prompts(tmp_path, tok):
    from rlpost.config import load_config
    from rlpost.data import load_prompts

    paths = make_task_file("countdown", tmp_path, n=10, seed=0, eval_n=2)
    cfg = load_config(None, ["model.path=x", f"data.train={paths['train']}"], validate_paths=False)
    rows = load_prompts(cfg, tok)
    task = get_task("countdown")
    comps = [task.sft_target(r) for r in rows]
    cols = {k: [r[k] for r in rows] for k in ("answer", "numbers", "target")}
    assert task.reward([r["prompt"] for r in rows], comps, **cols) == [1.0] * 10


@pytest.mark.parametrize(
    "name, level", [("arithmetic", 3), ("countdown", 4), ("chain", 2), ("gsm8k", 3)]
)
def test_level_option_gives_that_difficulty(name, level):
    rows = get_task(f"{name}?level={level}").generate(40, 0, "train")
    assert {r["difficulty"] for r in rows} == {level}
