"""What TRL 1.x, verl and OpenRLHF hand a reward function, checked through rlpost's adapters."""

from __future__ import annotations

import pytest

from rewards.base import TrainerState, make_caller
from rewards.pipeline import RewardPipeline
from rlpost.config import load_config

MSGS = [[{"role": "user", "content": "1+1?"}], [{"role": "user", "content": "2+2?"}]]
COLS = {
    "raw_prompt": MSGS,
    "solution": ["2", "4"],
    "completion_ids": [[5, 6], [7]],
    "_epoch": [0.5, 0.5],
}


def test_trl_gets_conversational_completions_and_every_trl_keyword():
    seen: dict = {}

    def reward(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **kw):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, kw=kw)
        seen["state"] = (trainer_state.global_step, trainer_state.max_steps, trainer_state.epoch)
        log_metric("my_metric", 3.0)
        log_extra("why", ["a", "b"])
        return [1.0, 0.0]

    res = make_caller(reward, "trl")(
        ["<r>1+1?", "<r>2+2?"], ["two", "four"], COLS, TrainerState(3, 10, 0.5)
    )
    assert seen["prompts"] == MSGS
    assert seen["completions"] == [
        [{"role": "assistant", "content": "two"}],
        [{"role": "assistant", "content": "four"}],
    ]
    assert seen["ids"] == [[5, 6], [7]]
    assert seen["state"] == (3, 10, 0.5)
    assert seen["kw"]["solution"] == ["2", "4"]
    assert "raw_prompt" not in seen["kw"] and "_epoch" not in seen["kw"]
    assert res.items == [1.0, 0.0]
    assert res.extras == {"my_metric": [3.0]} and res.columns == {"why": ["a", "b"]}


def test_builtins_keep_text_completions_on_conversational_data():
    seen = {}

    def builtin(prompts, completions, **kw):
        seen["c"] = completions
        return [0.0, 0.0]

    make_caller(builtin, "rlpost")(["p", "q"], ["two", "four"], COLS, 0)
    assert seen["c"] == ["two", "four"]


def test_trl_own_think_format_and_accuracy_rewards():
    pytest.importorskip("trl")
    from trl.rewards import accuracy_reward, think_format_reward

    completions = ["<think>hm</think>The answer is $\\boxed{2}$", "no think, $\\boxed{5}$"]
    fmt = make_caller(think_format_reward, "auto")(["a", "b"], completions, COLS, 0)
    acc = make_caller(accuracy_reward, "auto")(["a", "b"], completions, COLS, 0)
    assert fmt.items == [1.0, 0.0]
    assert acc.items == [1.0, 0.0]
    assert acc.columns["solution"] == ["2", "4"]  # what it logged through log_extra


def test_verl_gets_its_extra_info_dict_as_is():
    got = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        got.append((data_source, ground_truth, extra_info))
        return {"score": 1.0, "acc": 0.5, "pred": "x"}

    cols = {
        "data_source": ["gsm8k", "gsm8k"],
        "answer": ["2", "4"],
        "extra_info": [{"split": "train", "index": 0}, {"split": "train", "index": 1}],
        "reward_model": [{"style": "rule", "ground_truth": "2"}] * 2,
    }
    res = make_caller(compute_score)(["p", "q"], ["a", "b"], cols, 0)
    assert got[1] == ("gsm8k", "4", {"split": "train", "index": 1})
    assert res.items == [1.0, 1.0] and res.extras == {"acc": [0.5, 0.5]}


def test_openrlhf_dict_rewards_train_and_scores_extra_logs_are_logged():
    import torch

    def reward_func(queries, prompts, labels, **kw):
        r = torch.tensor([float(q.endswith(y)) for q, y in zip(queries, labels)])
        return {"rewards": r, "scores": r * 0.5, "extra_logs": {"hit": r, "const": 2.0}}

    res = make_caller(reward_func)(["p", "q"], ["2", "3"], {"answer": ["2", "4"]}, 0)
    assert res.items == [1.0, 0.0]
    assert res.extras == {"scores": [0.5, 0.0], "hit": [1.0, 0.0], "const": [2.0]}


def test_pipeline_logs_extras_and_log_extra_columns(spec):
    cfg = load_config(
        None,
        ["model.path=unused", f"reward.functions=[{spec('logs_things')}]", "reward.workers=0",
         "trainer.steps=9"],
        validate_paths=False,
    )  # fmt: skip
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(["p", "q"], ["a", "bb"], {"raw_prompt": ["p", "q"]}, step=2)
    assert scores == [1.0, 2.0]
    assert m["reward/logs_things/seen_step"] == 2.0
    assert m["reward/logs_things/max_steps"] == 9.0
    assert m["samples/lengths"] == [1, 2]


def test_trl_text_prompts_arrive_as_written_and_completions_stay_text():
    seen = {}

    def reward(prompts, completions, **kw):
        seen.update(p=prompts, c=completions)
        return [0.0, 0.0]

    cols = {"raw_prompt": ["1+1?", "2+2?"]}
    make_caller(reward, "trl")(["<user>1+1?<bot>", "<user>2+2?<bot>"], ["2", "4"], cols, 0)
    assert seen == {"p": ["1+1?", "2+2?"], "c": ["2", "4"]}
