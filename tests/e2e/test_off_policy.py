"""The one-step-off pipeline through the real `rlpost train`: GRPO and PPO with
``trainer.off_policy_steps=1`` on real Ray + vLLM + DeepSpeed (nano model, 3 steps).

Step 1 trains on a batch made by the initial weights; steps 2 and 3 train on batches that were
generated while the learner trained the step before, so they are exactly one weight version old.
GRPO (one optimizer step per batch) takes π_old from the loss's own forward; PPO (2 epochs)
recomputes it before training. (PPO's synchronous path is walked by test_faults.py.)
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("recipe", ["grpo_tiny.yaml", "ppo_tiny.yaml"])
def test_one_step_off_trains_on_samples_one_version_old(train_tiny, recipe):
    rows = train_tiny(recipe, "trainer.off_policy_steps=1", "reward.functions=[length(target=40)]")
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["rollout/staleness_mean"] for r in rows] == [0.0, 1.0, 1.0]
    for r in rows:  # the correction ran, and the engine/learner gap is still reported
        assert 0.0 < r["rollout/is_weight_mean"] <= 2.0  # the default cap
        assert 0.0 <= r["rollout/is_clip_frac"] <= 1.0
        assert r["rollout/logprob_diff"] >= 0.0
        assert r["timing_s/generate"] > 0 and r["timing_s/train"] > 0
    if recipe.startswith("ppo"):  # the critic trains too, on values the current critic computed
        assert all("loss/value" in r and "critic/values_mean" in r for r in rows)
        assert rows[-1]["critic/values_mean"] != rows[0]["critic/values_mean"]
    print(
        {
            k: [round(r[k], 4) for r in rows]
            for k in ("rollout/is_weight_mean", "rollout/logprob_diff", "timing_s/wait_rollout")
        }
    )
