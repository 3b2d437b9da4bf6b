"""SuperHF: top-k filtering, NLL + β·KL assembly on a hand-made batch, collect on a fake
experience, padded rows, state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.superhf import SuperHF, by_group, top_k_per_group
from rlpost.batch import Batch
from rlpost.config import ConfigError


def algo(make_cfg, *over: str) -> SuperHF:
    return SuperHF(make_cfg("algorithm.name=superhf", "rollout.n=3", *over))


def test_top_k_per_group_keeps_best_in_batch_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.3, 0.2])
    groups = ["a", "a", "a", "b", "b", "b"]
    assert top_k_per_group(scores, groups, 1) == [1, 3]  # tie 0.3/0.3: the earlier row
    assert top_k_per_group(scores, groups, 2) == [1, 2, 3, 4]
    assert top_k_per_group(scores, groups, 5) == [0, 1, 2, 3, 4, 5]
    assert by_group(["x", "y", "z"], [7, 8, 7]) == [["x", "z"], ["y"]]


def hand_batch(beta: float = 0.1) -> Batch:
    b = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1, 1], [0, 1, 0]]),
            "ref_logp": torch.tensor([[0.0, -1, -1], [0, -0.5, -9]]),
        }
    )
    b.meta["kl_beta"] = beta
    return b


LOGP = [[0.0, -1, -2], [0, -0.5, -9]]
COUNTS = {"num_tokens": 3, "num_seqs": 2, "max_len": 3}
# NLL = (1 + 2 + 0.5) / 3; k3 at the one token where ref ≠ logp: d = 1 → e − 2; β = 0.1
EXPECTED = 3.5 / 3 + 0.1 * (math.e - 2) / 3


def test_loss_is_nll_plus_beta_k3(make_cfg):
    a = algo(make_cfg, "algorithm.kl.beta=0.1")
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, m = a.loss(logp, hand_batch(), COUNTS)
    assert loss.item() == pytest.approx(EXPECTED, rel=1e-6)
    assert m["loss/sft"] == pytest.approx(3.5 / 3)
    assert m["kl/mean"] == pytest.approx((math.e - 2) / 3)
    loss.backward()
    # ∂/∂logp[0,2]: −1/3 from the NLL, β·(−(e^d − 1))/3 from k3
    assert logp.grad[0, 2].item() == pytest.approx(-1 / 3 - 0.1 * (math.e - 1) / 3)
    assert logp.grad[0, 0].item() == 0.0  # prompt token


def test_padded_rows_and_micro_batches_add_up(make_cfg):
    a = algo(make_cfg, "algorithm.kl.beta=0.1")
    b = hand_batch()
    pad = b.select([0])
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    padded = Batch.concat([b, pad])
    logp = torch.tensor([*LOGP, LOGP[0]])
    whole, _ = a.loss(logp, padded, COUNTS)
    parts = sum(a.loss(logp[i : i + 1], padded.select([i]), COUNTS)[0] for i in range(3))
    assert whole.item() == pytest.approx(EXPECTED, rel=1e-6)
    assert parts.item() == pytest.approx(EXPECTED, rel=1e-6)


def test_no_reference_when_beta_zero(make_cfg):
    a = algo(make_cfg, "algorithm.kl.beta=0")
    assert not a.needs().reference and a.needs().samples_per_prompt == 3
    b = hand_batch()
    del b.tensors["ref_logp"]
    loss, m = a.loss(torch.tensor(LOGP), b, COUNTS)
    assert loss.item() == pytest.approx(3.5 / 3) and "loss/kl" not in m
    assert algo(make_cfg, "algorithm.kl.beta=0.2").needs().reference


def test_top_k_must_fit_n(make_cfg):
    with pytest.raises(ConfigError, match=r"algorithm.top_k: must be in \[1, rollout.n=3\]"):
        algo(make_cfg, "algorithm.top_k=4")


class FakeExp:
    """Two prompts × 3 samples; reward = number of 'a' characters."""

    step, policy_version = 0, 0

    def generate(self, prompts, n):
        texts = ["a", "aaa", "b", "aa", "a b", "ba a a"]
        b = Batch({"response_mask": torch.ones(6, 2)})
        b["completion"] = texts
        b["group_id"] = [0, 0, 0, 1, 1, 1]
        return b

    def score(self, batch):
        batch["scores"] = torch.tensor([float(t.count("a")) for t in batch["completion"]])
        return {"reward/fn/mean": 1.0}


def test_collect_keeps_best_and_logs_meteor(make_cfg):
    a = algo(make_cfg, "algorithm.top_k=1")
    kept = a.collect(FakeExp(), [{}, {}])
    assert kept["completion"] == ["aaa", "ba a a"]
    m = a.prepare(kept)
    assert m["superhf/kept_rows"] == 2.0
    assert m["reward/mean"] == pytest.approx(10 / 6)
    assert m["superhf/kept_reward_mean"] == pytest.approx(3.0)
    assert 0.0 < m["superhf/meteor_similarity"] < 1.0
    assert m["reward/fn/mean"] == 1.0
    assert kept.meta["kl_beta"] == pytest.approx(0.04)


def test_state_dict_round_trip(make_cfg):
    over = ("algorithm.kl.controller=schedule", "algorithm.kl.end=0.3", "trainer.steps=4")
    a = algo(make_cfg, *over)
    for _ in range(3):
        a.update({"kl/mean": 0.1})
    b = algo(make_cfg, *over)
    b.load_state_dict(a.state_dict())
    assert b.step == 3 and b.kl.value == pytest.approx(a.kl.value) and b.kl.value > 0
