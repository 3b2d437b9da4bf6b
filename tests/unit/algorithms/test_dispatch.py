"""Algorithms dispatch by the configured registry names (advantage, policy loss, KL placement),
and PPO's adaptive controller moves as Ziegler et al.: samples and per-sequence KL."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from algorithms.base import build_algorithm
from rlpost.batch import Batch
from rlpost.config import ConfigError
from rlpost.objective import ADVANTAGES, POLICY_LOSSES, register_advantage

COUNTS = {"num_tokens": 8, "num_seqs": 4, "max_len": 2}


def scored_batch() -> Batch:
    """Two prompts × two samples, two response tokens after one prompt token."""
    return Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0, 1.0]] * 4),
            "old_logp": torch.tensor([[0.0, -1.0, -1.0]] * 4),
            "ref_logp": torch.tensor([[0.0, -1.5, -1.0]] * 4),
            "scores": torch.tensor([1.0, 0.0, 3.0, 1.0]),
            "values": torch.tensor([[0.0, 0.5, 0.25]] * 4),
        },
        {"group_id": [7, 7, 9, 9]},
    )


@pytest.mark.parametrize("algorithm", ["grpo", "grpo_d", "ppo"])
def test_every_registered_estimator_runs_by_name(make_cfg, monkeypatch, algorithm):
    ran: list[str] = []
    for name in ADVANTAGES.names():
        real = ADVANTAGES.get(name)

        def spy(*args, _name=name, _real=real):
            ran.append(_name)
            return _real(*args)

        spy.needs_values = getattr(real, "needs_values", False)
        monkeypatch.setitem(ADVANTAGES._items, name, spy)
    for name in ADVANTAGES.names():
        ran.clear()
        if algorithm == "ppo":  # config.py still refuses ppo without gae: set it past the check
            cfg = make_cfg("algorithm.name=ppo", "algorithm.advantage=gae", "rollout.n=2")
            cfg = replace(cfg, algorithm=replace(cfg.algorithm, advantage=name))
        else:
            cfg = make_cfg(
                f"algorithm.name={algorithm}", f"algorithm.advantage={name}", "rollout.n=2"
            )
        algo = build_algorithm(cfg)
        b = scored_batch()
        algo.prepare(b)
        assert ran == [name]
        assert algo.needs().critic == (name == "gae")  # a critic exactly when values are read
        assert b["advantages"].shape == (4, 3) and (b["advantages"][:, 0] == 0).all()


def test_grpo_estimators_give_their_own_values(make_cfg):
    """group (std), rloo and reinforce_pp each by hand on the same batch (KL in the loss)."""
    out = {}
    for name in ("group", "rloo", "reinforce_pp", "gae"):
        algo = build_algorithm(
            make_cfg("algorithm.name=grpo", f"algorithm.advantage={name}", "algorithm.lam=1.0")
        )
        b = scored_batch()
        algo.prepare(b)
        out[name] = b["advantages"][:, 1:]
    # group: (1, 0) → ±0.5/std with unbiased std √0.5; (3, 1) → ±1/√2: all ±1/√2
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out["group"][:, 0], torch.tensor([s, -s, s, -s]))
    # rloo: r_i − r_j within each pair → (1, −1, 2, −2)
    torch.testing.assert_close(out["rloo"][:, 1], torch.tensor([1.0, -1.0, 2.0, -2.0]))
    # reinforce_pp: returns-to-go of rewards (0, r) = (r, r) on both tokens, whitened over the 8
    # tokens: mean 1.25, population std √1.1875
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    torch.testing.assert_close(
        out["reinforce_pp"][:, 0], (r - 1.25) / math.sqrt(1.1875 + 1e-8), rtol=1e-5, atol=1e-5
    )
    # gae (γ=λ=1): A_t = r-to-go − V_t: tokens (r − 0.5, r − 0.25), then whitened
    raw = torch.stack([r - 0.5, r - 0.25], -1)
    white = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(out["gae"], white, rtol=1e-5, atol=1e-5)


def test_user_estimator_by_name_and_typo_refused(make_cfg):
    @register_advantage("test_constant", overwrite=True)
    def constant(scores, token_rewards, values, mask, group_ids, cfg):
        a = 0.5 * mask
        return a, a

    algo = build_algorithm(make_cfg("algorithm.name=grpo", "algorithm.advantage=test_constant"))
    b = scored_batch()
    algo.prepare(b)
    assert (b["advantages"][:, 1:] == 0.5).all()
    with pytest.raises(ConfigError, match=r"algorithm.advantage: unknown .*'gea'.*'gae'"):
        build_algorithm(make_cfg("algorithm.name=grpo", "algorithm.advantage=gea"))


def test_kl_placement_in_reward_shapes_the_reward_and_leaves_the_loss(make_cfg):
    """GRPO with kl.placement=in_reward: the group sees r − β·Σk, the loss has no KL term."""
    common = ("algorithm.name=grpo", "algorithm.kl.beta=0.5", "algorithm.kl.estimator=k1")
    algo = build_algorithm(make_cfg(*common, "algorithm.kl.placement=in_reward"))
    b = scored_batch()
    b.tensors["ref_logp"] = torch.tensor([[0.0, -1.5, -1.0], [0.0, -1.0, -1.0]] * 2)
    m = algo.prepare(b)
    # Σk1 per row = (old − ref) summed = 0.5, 0, 0.5, 0 → shaped r = 0.75, 0, 2.75, 1
    # group 0: (0.75, 0) → ±1/√2; group 1: (2.75, 1) → ±1/√2
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(b["advantages"][:, 1], torch.tensor([s, -s, s, -s]))
    assert m["kl/seq_mean"] == pytest.approx(0.25)
    logp = b["old_logp"].clone()
    loss, metrics = algo.loss(logp, b, COUNTS)
    assert "loss/kl" not in metrics and loss.item() == pytest.approx(0.0, abs=1e-7)
    # the same config with the KL in the loss adds β·k1 (token-mean) to the loss instead
    algo = build_algorithm(make_cfg(*common, "algorithm.kl.placement=in_loss"))
    b2 = scored_batch()
    b2.tensors["ref_logp"] = b.tensors["ref_logp"]
    algo.prepare(b2)
    torch.testing.assert_close(
        b2["advantages"][:, 1], torch.tensor([s, -s, s, -s])
    )  # unshaped (1, 0), (3, 1) give the same signs and sizes
    _, metrics = algo.loss(logp, b2, COUNTS)
    assert metrics["loss/kl"] == pytest.approx(0.5 * 1.0 / 8)  # Σ k1 = 1.0 over 8 tokens


def test_ppo_kl_placement_auto_is_in_reward_and_uses_the_estimator(make_cfg):
    cfg = make_cfg("algorithm.name=ppo", "algorithm.advantage=gae", "algorithm.kl.beta=0.1")
    cfg = replace(
        cfg, algorithm=replace(cfg.algorithm, kl=replace(cfg.algorithm.kl, placement="auto"))
    )
    algo = build_algorithm(cfg)
    assert algo.kl_placement() == "in_reward"
    b = scored_batch()
    b.tensors["old_logp"] = torch.tensor([[0.0, -1.0, -1.0]] * 4)
    b.tensors["ref_logp"] = torch.tensor([[0.0, -1.5, -1.0]] * 4)
    m = algo.prepare(b)
    # default estimator k3 with d = ref − old = (−0.5, 0): e^−0.5 + 0.5 − 1 = 0.10653 on token 1
    k3 = math.exp(-0.5) + 0.5 - 1
    assert m["kl/seq_mean"] == pytest.approx(k3, rel=1e-5)
    assert m["kl/mean"] == pytest.approx(k3 / 2, rel=1e-5)
    # returns (λ = 0.95, V = (0.5, 0.25)): R_2 = r, R_1 = A_1 + V_1 with δ_1 = −0.1·k3 + 0.25 − 0.5
    r = b["scores"]
    a2 = r - 0.25
    a1 = (-0.1 * k3 + 0.25 - 0.5) + 0.95 * a2
    torch.testing.assert_close(b["returns"][:, 2], r)
    torch.testing.assert_close(b["returns"][:, 1], a1 + 0.5)


def test_policy_loss_by_name(make_cfg):
    """reinforce: −A·logp (value at logp = old is −Σ A·logp / tokens); clipped: −A·ρ."""
    assert {"clipped", "dual_clip", "reinforce", "importance_weighted"} <= set(POLICY_LOSSES)
    b = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0], [0.0, 1.0]]),
            "old_logp": torch.tensor([[0.0, -1.0], [0.0, -2.0]]),
            "advantages": torch.tensor([[0.0, 1.0], [0.0, -1.0]]),
        }
    )
    counts = {"num_tokens": 2, "num_seqs": 2, "max_len": 1}
    logp = b["old_logp"].clone()
    logp[0, 1] = -0.5  # ρ = e^0.5 = 1.6487 on row 0: beyond the 1.2 clip
    algo = build_algorithm(make_cfg("algorithm.name=grpo", "algorithm.kl.beta=0"))
    clipped, _ = algo.loss(logp, b, counts)
    assert clipped.item() == pytest.approx((-1.2 + 1.0) / 2, rel=1e-6)
    algo.a.policy_loss = "reinforce"  # set on the options (the config key may not exist yet)
    reinforce, _ = algo.loss(logp, b, counts)
    assert reinforce.item() == pytest.approx((0.5 + -2.0) / 2, rel=1e-6)
    algo.a.policy_loss = "importance_weighted"
    iw, _ = algo.loss(logp, b, counts)
    assert iw.item() == pytest.approx((-math.exp(0.5) + 1.0) / 2, rel=1e-6)


def test_adaptive_controller_moves_by_samples_and_sequence_kl(make_cfg):
    """β ← β·(1 + clip(KL_seq/target − 1, ±0.2)·n_samples/horizon), KL_seq summed over tokens.

    4 samples, 2 response tokens each, k1 = old − ref = (0.5, 0.25) → KL_seq = 0.75 per sample.
    target 0.5: e = clip(0.75/0.5 − 1) = 0.2 (clipped from 0.5); horizon 40:
    β = 0.1·(1 + 0.2·4/40) = 0.102. Fed per-token KL (0.375) and n_steps = 1, as before the
    fix, β would have gone to 0.1·(1 − 0.2·1/40): the wrong way, and 4× too little.
    """
    algo = build_algorithm(
        make_cfg(
            "algorithm.name=ppo",
            "algorithm.advantage=gae",
            "algorithm.kl.placement=in_reward",
            "algorithm.kl.estimator=k1",
            "algorithm.kl.controller=adaptive",
            "algorithm.kl.beta=0.1",
            "algorithm.kl.target=0.5",
            "algorithm.kl.horizon=40",
        )
    )
    b = scored_batch()
    b.tensors["ref_logp"] = torch.tensor([[0.0, -1.5, -1.25]] * 4)
    m = algo.prepare(b)
    assert m["kl/seq_mean"] == pytest.approx(0.75)
    out = algo.update({"kl/mean": 123.0})  # a learner metric must not steer the controller
    assert out["kl/beta_next"] == pytest.approx(0.1 * (1 + 0.2 * 4 / 40))
    # below target: KL_seq 0.45 → e = −0.1; 4 samples → β ·= (1 − 0.1·4/40)
    b = scored_batch()
    b.tensors["ref_logp"] = torch.tensor([[0.0, -1.25, -1.2]] * 4)
    algo.prepare(b)
    beta = 0.1 * (1 + 0.2 * 4 / 40)
    assert algo.update({})["kl/beta_next"] == pytest.approx(beta * (1 - 0.1 * 4 / 40))
    # a step without a measured KL leaves β alone
    assert algo.update({})["kl/beta_next"] == pytest.approx(beta * (1 - 0.1 * 4 / 40))


def test_superhf_refuses_kl_in_reward(make_cfg):
    with pytest.raises(ConfigError, match="algorithm.kl.placement"):
        build_algorithm(
            make_cfg("algorithm.name=superhf", "algorithm.kl.placement=in_reward", "rollout.n=2")
        )
