"""Samples generated ahead of the learner: truncated importance weights in the loss, by hand,
and the config refusing what cannot run ahead."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.base import build_algorithm
from rlpost.batch import Batch
from rlpost.config import ConfigError
from rlpost.objective import truncated_is_weights


def test_truncated_is_weights_by_hand():
    old = torch.tensor([[0.0, math.log(0.5), math.log(0.3)]])
    behav = torch.tensor([[0.0, math.log(0.25), math.log(0.05)]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    w, m = truncated_is_weights(old, behav, mask, cap=2.0)
    # π_old/μ = 1 (prompt, masked), 0.5/0.25 = 2 (at the cap, not above it), 0.3/0.05 = 6 → 2
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 2.0]]), atol=1e-6)
    assert m["is_weight_mean"].item() == pytest.approx(2.0, rel=1e-6)
    assert m["is_clip_frac"].item() == pytest.approx(0.5)  # one of the two response tokens
    w_low, m_low = truncated_is_weights(behav, old, mask, cap=2.0)  # ratios below 1 pass as is
    assert torch.allclose(w_low[0, 1:], torch.tensor([0.5, 0.05 / 0.3]), atol=1e-6)
    assert m_low["is_clip_frac"].item() == 0.0
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, behav, mask, cap=0.0)


def _batch(behav: torch.Tensor | None) -> Batch:
    b = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0]] * 4),
            "old_logp": torch.zeros(4, 2),
            "ref_logp": torch.zeros(4, 2),
            "scores": torch.tensor([1.0, 0.0, 2.0, 2.0]),
        }
    )
    if behav is not None:
        b.tensors["behav_logp"] = behav
    b.columns["group_id"] = [0, 0, 1, 1]
    return b


def test_grpo_loss_weights_stale_samples_by_hand(make_cfg):
    algo = build_algorithm(
        make_cfg("algorithm.name=grpo", "algorithm.kl.beta=0", "algorithm.is_cap=1.5")
    )
    behav = torch.zeros(4, 2)
    behav[0, 1] = math.log(0.5)  # π_old/μ = 2 → capped to 1.5
    behav[1, 1] = math.log(4.0)  # π_old/μ = 0.25
    b = _batch(behav)
    algo.prepare(b)
    s = 1 / math.sqrt(0.5)  # group 0 advantages ±0.7071, group 1: 0
    logp = torch.zeros(4, 2)
    logp[0, 1] = 0.1  # ρ = e^0.1 inside the clip
    loss, m = algo.loss(logp, b, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    # token-mean of −w·A·ρ: row 0: −1.5·0.7071·e^0.1, row 1: −0.25·(−0.7071)·1
    expect = -(1.5 * 0.5 * s * math.exp(0.1) - 0.25 * 0.5 * s) / 4
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert m["rollout/is_weight_mean"] == pytest.approx((1.5 + 0.25 + 1 + 1) / 4, rel=1e-6)
    assert m["rollout/is_clip_frac"] == pytest.approx(0.25)
    # the log-prob gap is to what the engine sampled with: |0.1 − log 0.5|, |log 4|, 0, 0
    gap = (abs(0.1 - math.log(0.5)) + math.log(4.0)) / 4
    assert m["rollout/logprob_diff"] == pytest.approx(gap, rel=1e-5)
    # without behaviour log-probs (synchronous): no weights, the same loss as before
    plain = _batch(None)
    algo.prepare(plain)
    loss0, m0 = algo.loss(logp, plain, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    assert loss0.item() == pytest.approx(-(0.5 * s * math.exp(0.1) - 0.5 * s) / 4, rel=1e-5)
    assert "rollout/is_weight_mean" not in m0


@pytest.mark.parametrize("name", ["grpo", "grpo_d", "ppo"])
def test_policy_gradient_algorithms_may_run_ahead(make_cfg, name):
    cfg = make_cfg(f"algorithm.name={name}", "trainer.off_policy_steps=2")
    assert cfg.trainer.off_policy_steps == 2
    assert build_algorithm(cfg).needs().off_policy


@pytest.mark.parametrize("name", ["dpo", "fdpg", "superhf", "mcts_dpo", "kdrl"])
def test_on_policy_algorithms_refuse_to_run_ahead(make_cfg, name):
    with pytest.raises(ConfigError, match=rf"trainer.off_policy_steps: {name} learns on-policy"):
        make_cfg(f"algorithm.name={name}", "trainer.off_policy_steps=1", "teacher.path=unused")


def test_off_policy_config_errors_name_the_key(make_cfg):
    with pytest.raises(ConfigError, match="trainer.off_policy_steps: must be >= 0"):
        make_cfg("trainer.off_policy_steps=-1")
    with pytest.raises(ConfigError, match="algorithm.is_cap: must be > 0"):
        make_cfg("algorithm.is_cap=0")
    with pytest.raises(ConfigError, match="colocate"):
        make_cfg(
            "trainer.off_policy_steps=1",
            "placement.mode=colocate",
            "rollout.gpus_per_engine=1",
            "learner.gpus_per_rank=1",
        )


def test_one_optimizer_step_takes_pi_old_from_the_losss_own_forward(make_cfg):
    """epochs = 1, one mini-batch: π_old = the forward before the only step, so no extra pass;
    the ratio is 1 and the gradient is −w·A per token (token-mean over 4 tokens)."""
    algo = build_algorithm(
        make_cfg("algorithm.name=grpo", "algorithm.kl.beta=0", "algorithm.is_cap=1.5")
    )
    behav = torch.zeros(4, 2)
    behav[0, 1] = -0.5  # π_old/μ at logp = 0.1: e^0.6 = 1.82 → capped to 1.5
    behav[1, 1] = 0.4  # e^-0.3 = 0.741
    b = _batch(behav)
    b.tensors["old_logp"] = torch.full((4, 2), -9.0)  # stale: must not be read
    b.meta["old_logp_from_forward"] = True
    algo.prepare(b)
    s = 1 / math.sqrt(0.5)
    logp = torch.full((4, 2), 0.1, requires_grad=True)
    loss, m = algo.loss(logp, b, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    w0, w1 = 1.5, math.exp(-0.3)
    assert loss.item() == pytest.approx(-(w0 * 0.5 * s - w1 * 0.5 * s) / 4, rel=1e-5)
    loss.backward()
    assert logp.grad[0, 1].item() == pytest.approx(-w0 * 0.5 * s / 4, rel=1e-5)
    assert logp.grad[1, 1].item() == pytest.approx(w1 * 0.5 * s / 4, rel=1e-5)
    assert m["rollout/is_clip_frac"] == pytest.approx(0.25)
    assert m["pg/clip_frac"] == 0.0
