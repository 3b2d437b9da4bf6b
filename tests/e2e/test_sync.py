"""Weight sync on the path real models take: a Qwen2-architecture model (tied embeddings, q/k/v
biases) trained through the collective weight-update group with verification on."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
REWARD = """
def score(prompts, completions, **columns):
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
"""


def test_qwen2_tiny_trains_with_collective_sync_verified(run_cli, tmp_path):
    reward = tmp_path / "digit_reward.py"
    reward.write_text(REWARD)
    run_cli(
        "train",
        str(ROOT / "launch/recipes/grpo_tiny.yaml"),
        "model.path=tiny:qwen2-nano",
        "rollout.sync_transport=collective",
        # 0.1 MB buckets: the tied 1024x64 fp32 embedding (256 KB) is larger than a bucket and
        # travels alone; norms and biases share buckets with projections
        "rollout.sync_bucket_mb=0.1",
        "rollout.verify_sync=true",
        "trainer.steps=2",
        f"reward.functions=[{reward}:score]",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=qwen2",
    )
    log = (tmp_path / "qwen2/train.log").read_text()
    assert "weight sync: collective" in log
    assert "weight-update group: 2 ranks, 5 buckets" in log, log[-2000:]
    rows = read_metrics(tmp_path / "qwen2/metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1.0, 2.0]
    assert any(r["grad_norm"] > 0 for r in rows)
    for r in rows:
        # embeddings and norms compared by checksum; fused q/k/v (with their biases) and the
        # tied lm_head are what the engine samples with, so they show in the log-prob check
        assert r["sync/checksummed"] >= 5 and r["sync/checksum_mismatch"] == 0
        assert r["rollout/logprob_diff"] < 1e-4, r["rollout/logprob_diff"]
