"""GRPO and PPO assemble their losses from objective terms: checked on hand-made batches."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.base import build_algorithm
from rlpost.batch import Batch


def grpo_batch() -> Batch:
    # two prompts x two samples; one response token each (position 1)
    mask = torch.tensor([[0.0, 1.0]] * 4)
    b = Batch(
        {
            "response_mask": mask,
            "old_logp": torch.zeros(4, 2),
            "ref_logp": torch.zeros(4, 2),
            "scores": torch.tensor([1.0, 0.0, 2.0, 2.0]),
        }
    )
    b.columns["group_id"] = [0, 0, 1, 1]
    return b


def test_grpo_prepare_and_loss_by_hand(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo", "algorithm.kl.beta=0.5"))
    b = grpo_batch()
    m = algo.prepare(b)
    # group 0: mean 0.5, unbiased std 0.7071 -> ±0.7071; group 1 identical -> 0
    s = 1 / math.sqrt(0.5)
    seq = torch.tensor([0.5 * s, -0.5 * s, 0.0, 0.0])  # on the response token, 0 on the prompt
    assert torch.allclose(b["advantages"][:, 1], seq, atol=1e-5)
    assert (b["advantages"][:, 0] == 0).all()
    assert m["kl/beta"] == 0.5 and b.meta["kl_beta"] == 0.5
    # logp = old + 0.1 on row 0 (ratio e^0.1 = 1.105 inside the clip), ref = 0
    logp = torch.zeros(4, 2)
    logp[0, 1] = 0.1
    loss, metrics = algo.loss(logp, b, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    # pg: token-mean of -A·ρ = -(0.7071·e^0.1 + (-0.7071)·1 + 0 + 0)/4
    pg = -(0.5 * s * math.exp(0.1) - 0.5 * s) / 4
    # kl (k3, d = ref - logp = -0.1 on row 0): e^-0.1 + 0.1 - 1 = 0.0048374, /4 tokens, x beta
    kl = 0.5 * (math.exp(-0.1) + 0.1 - 1) / 4
    assert loss.item() == pytest.approx(pg + kl, rel=1e-5)
    assert metrics["loss/policy"] == pytest.approx(pg, rel=1e-5)
    assert metrics["kl/mean"] == pytest.approx((math.exp(-0.1) + 0.1 - 1) / 4, rel=1e-5)


def test_grpo_zero_mask_padding_rows_add_nothing(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo"))
    b = grpo_batch()
    algo.prepare(b)
    logp = torch.full((4, 2), -0.3, requires_grad=True)
    loss, _ = algo.loss(logp, b, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    padded = Batch.concat([b, b.select([0])])
    padded.tensors["response_mask"][4] = 0
    logp2 = torch.full((5, 2), -0.3, requires_grad=True)
    loss2, _ = algo.loss(logp2, padded, {"num_tokens": 4, "num_seqs": 4, "max_len": 1})
    assert loss2.item() == pytest.approx(loss.item())


class FakeExp:
    """Just enough Experience for dynamic sampling: generate + score."""

    def generate(self, prompts, n):
        b = grpo_batch()
        return b.select(list(range(len(b))))

    def score(self, batch):
        return {"reward/mean": 1.25}


def test_grpo_dynamic_sampling_drops_flat_groups(make_cfg):
    algo = build_algorithm(
        make_cfg("algorithm.name=grpo", "algorithm.dynamic_sampling=true", "rollout.n=2")
    )
    b = algo.collect(FakeExp(), [{}, {}])
    assert b["group_id"] == [0, 0]  # group 1 scored 2, 2: no signal, dropped
    m = algo.prepare(b)
    assert m["dynamic/kept_group_frac"] == 0.5


def test_ppo_prepare_gae_with_kl_in_reward_by_hand(make_cfg):
    algo = build_algorithm(
        make_cfg(
            "algorithm.name=ppo",
            "algorithm.advantage=gae",
            "algorithm.kl.beta=0.1",
            "algorithm.kl.placement=in_reward",
            "algorithm.kl.estimator=k1",
            "algorithm.lam=1.0",
        )
    )
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    b = Batch(
        {
            "response_mask": mask,
            "old_logp": torch.tensor([[0.0, -1.0, -1.0]]),
            "ref_logp": torch.tensor([[0.0, -1.5, -1.0]]),
            "scores": torch.tensor([2.0]),
            "values": torch.tensor([[0.0, 0.5, 1.0]]),
        }
    )
    m = algo.prepare(b)
    # token rewards: -β·k1 = -0.1·(old - ref) = [-0.05, 0] + score 2 on the last -> [-0.05, 2]
    # γ=λ=1: returns = rewards-to-go = [1.95, 2.0]
    assert torch.allclose(b["returns"][0, 1:], torch.tensor([1.95, 2.0]))
    assert m["kl/mean"] == pytest.approx(0.25)  # k1 mean over 2 tokens: (0.5 + 0)/2
    # critic loss: ½·max((V−R)², clipped) with V = old values → ½·mean([1.45², 1²]) × 0.5 coef
    loss, _ = algo.critic_loss(b["values"], b, {"num_tokens": 2, "num_seqs": 1, "max_len": 2})
    assert loss.item() == pytest.approx(0.5 * 0.5 * (1.45**2 + 1.0) / 2, rel=1e-5)
