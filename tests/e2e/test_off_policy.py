"""The one-step-off pipeline through the real `rlpost train`: GRPO and PPO with
``trainer.off_policy_steps=1`` on real Ray + vLLM + DeepSpeed (nano model, 3 steps).

Step 1 trains on a batch made by the initial weights; steps 2 and 3 train on batches that were
generated while the learner trained the step before, so they are exactly one weight version old.
(PPO's synchronous path is walked by tests/e2e/test_faults.py's critic test.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlpost.models import tiny
from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e

RECIPES = Path(__file__).resolve().parents[2] / "launch" / "recipes"


@pytest.mark.parametrize("recipe", ["grpo_tiny.yaml", "ppo_tiny.yaml"])
def test_one_step_off_trains_on_samples_one_version_old(run_cli, tmp_path, recipe):
    name = recipe.removesuffix("_tiny.yaml")
    run_cli(
        "train",
        str(RECIPES / recipe),
        f"trainer.output_dir={tmp_path}",
        f"trainer.run_name={name}",
        "trainer.steps=3",
        "trainer.off_policy_steps=1",
        "reward.functions=[length(target=40)]",  # varying scores: the policy gets a gradient
    )
    rows = read_metrics(tmp_path / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"step {r['step']}: non-finite metrics {bad}"
    assert [r["policy_version"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["rollout/staleness_mean"] for r in rows] == [0.0, 1.0, 1.0]
    for r in rows:  # the correction ran, and the engine/learner gap is still reported
        assert 0.0 < r["rollout/is_weight_mean"] <= 2.0  # the default cap
        assert 0.0 <= r["rollout/is_clip_frac"] <= 1.0
        assert r["rollout/logprob_diff"] >= 0.0
        assert r["timing_s/generate"] > 0 and r["timing_s/train"] > 0
    if name == "ppo":  # the critic trains too, on values the current critic computed
        assert all("loss/value" in r and "critic/values_mean" in r for r in rows)
        assert rows[-1]["critic/values_mean"] != rows[0]["critic/values_mean"]
    start = load_file(str(tiny.ensure("nano") / "model.safetensors"))
    end = load_file(str(tmp_path / name / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start if k in end), "policy never moved"
