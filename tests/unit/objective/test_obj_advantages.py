"""Advantage estimators against values worked out by hand."""

import pytest
import torch

from rlpost.objective import (
    ADVANTAGES,
    AdvantageConfig,
    advantage_needs_values,
    broadcast_to_tokens,
    discounted_returns,
    gae,
    group_advantages,
    masked_moments,
    register_advantage,
    reinforce_pp_advantages,
    rloo_advantages,
    score_at_last_token,
    whiten,
)

D = torch.float64
# groups: {1, 2, 3} | {0.1, 0.1, 0.1} identical | {5} alone | {4, 0}
SCORES = torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 0.1, 5.0, 4.0, 0.0], dtype=D)
IDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 3])


def test_group_std_hand_values():
    adv = group_advantages(SCORES, IDS)
    # group 0: mean 2, unbiased std √((1 + 0 + 1)/2) = 1 → ±1/(1 + 1e-6) = ±0.999999000001
    # group 3: mean 2, std √((4 + 4)/1) = 2√2 → ±2/(2√2 + 1e-6) = ±0.7071065311866358
    a, b = 0.9999990000010001, 0.7071065311866358
    expected = torch.tensor([-a, 0.0, a, 0.0, 0.0, 0.0, 0.0, b, -b], dtype=D)
    assert torch.allclose(adv, expected, rtol=0, atol=1e-12)
    assert not adv.isnan().any()
    assert (adv[3:7] == 0).all()  # identical scores and a group of one: exactly 0


def test_group_none_is_dr_grpo_and_ids_may_be_strings():
    adv = group_advantages(SCORES, ["a", "a", "a", "b", "b", "b", "c", "d", "d"], scale="none")
    expected = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.0], dtype=D)
    assert torch.allclose(adv, expected, atol=1e-12)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(SCORES, IDS, scale="max")


def test_group_float32_identical_scores_no_nan():
    adv = group_advantages(torch.full((4,), 0.1), [7, 7, 7, 7])
    assert adv.dtype == torch.float32 and (adv == 0).all()


def test_rloo_hand_values():
    adv = rloo_advantages(SCORES, IDS)
    # group 0: 1 − (2+3)/2 = −1.5, 2 − (1+3)/2 = 0, 3 − (1+2)/2 = 1.5; group 3: ±4; others 0
    expected = torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 4.0, -4.0], dtype=D)
    assert torch.allclose(adv, expected, atol=1e-12)


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[0, 1, 1], [1, 0, 0]]))
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 2.0], [-1.0, -0.0, -0.0]]))


def test_gae_hand_values_offsets_holes_and_empty_rows():
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    rewards = torch.tensor(
        [[9.0, 1.0, 0.0, 2.0, 7.0], [1.0, 100.0, 1.0, 0.0, 0.0], [1.0] * 5], dtype=D
    )
    values = torch.tensor(
        [[5.0, 0.5, 1.0, 1.5, 3.0], [0.2, 100.0, 0.4, 0.0, 0.0], [1.0] * 5], dtype=D
    )
    adv, ret = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.5)
    # row 0 (response at cols 1..3 after a prompt, then padding), γ = 0.9, λ = 0.5, γλ = 0.45:
    # δ3 = 2 + 0 − 1.5 = 0.5;  δ2 = 0 + 0.9·1.5 − 1 = 0.35;  δ1 = 1 + 0.9·1 − 0.5 = 1.4
    # A3 = 0.5;  A2 = 0.35 + 0.45·0.5 = 0.575;  A1 = 1.4 + 0.45·0.575 = 1.65875
    assert torch.allclose(adv[0], torch.tensor([0.0, 1.65875, 0.575, 0.5, 0.0], dtype=D))
    assert torch.allclose(ret[0], torch.tensor([0.0, 2.15875, 1.575, 2.0, 0.0], dtype=D))
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 1: col 1 is masked and skipped: δ2 = 1 − 0.4 = 0.6; δ0 = 1 + 0.4 − 0.2 = 1.2
    # A2 = 0.6; A0 = 1.8; returns = rewards-to-go = 2, 1
    assert torch.allclose(adv[1], torch.tensor([1.8, 0.0, 0.6, 0.0, 0.0], dtype=D))
    assert torch.allclose(ret[1], torch.tensor([2.0, 0.0, 1.0, 0.0, 0.0], dtype=D))
    assert (adv[2] == 0).all() and (ret[2] == 0).all()  # empty row


def test_discounted_returns_and_reinforce_pp_hand_values():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, -1.0, 0.0, 0.0]], dtype=D)
    # γ = ½: row 0: G3 = 2, G2 = 1, G1 = 1.5; row 1: G1 = −1, G0 = 3 − 0.5 = 2.5
    g = discounted_returns(rewards, mask, gamma=0.5)
    assert torch.allclose(g, torch.tensor([[0.0, 1.5, 1.0, 2.0], [2.5, -1.0, 0.0, 0.0]], dtype=D))
    # valid returns (1.5, 1, 2, 2.5, −1): mean 1.2, population var 7.3/5 = 1.46
    # whitened = (x − 1.2)/√(1.46 + 1e-8)
    adv = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    expected = torch.tensor(
        [
            [0.0, 0.24828176573043037, -0.16552117715362027, 0.6620847086144811],
            [1.0758876514985318, -1.820732948689823, 0.0, 0.0],
        ],
        dtype=D,
    )
    assert torch.allclose(adv, expected, atol=1e-12)


def test_whiten_global_moments_and_empty_mask():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    local = whiten(x[:1], mask[:1])
    # alone, row 0 is (1, 2, 3): mean 2, var ⅔ → (−1, 0, 1)/√(⅔)
    assert torch.allclose(local, torch.tensor([[-1.224744871, 0.0, 1.224744871]], dtype=D))
    # with the moments of both "ranks", row 0 is whitened by global stats (mean 7.2)
    moments = [
        a + b for a, b in zip(masked_moments(x[:1], mask[:1]), masked_moments(x[1:], mask[1:]))
    ]
    assert torch.allclose(whiten(x[:1], mask[:1], moments=tuple(moments)), whiten(x, mask)[:1])
    assert (whiten(x, torch.zeros_like(mask)) == 0).all()
    no_shift = whiten(x[:1], mask[:1], shift_mean=False)
    assert torch.allclose(no_shift, x[:1] / (2.0 / 3.0 + 1e-8) ** 0.5)


def test_advantage_registry_one_signature():
    assert {"group", "rloo", "gae", "reinforce_pp"} <= set(ADVANTAGES)
    assert [n for n in ADVANTAGES if advantage_needs_values(n)] == ["gae"]

    @register_advantage("test_raw", overwrite=True)
    def raw(scores, token_rewards, values, mask, group_ids, cfg):
        return token_rewards, token_rewards

    assert ADVANTAGES.get("test_raw") is raw and not advantage_needs_values("test_raw")


def test_uniform_entries_match_the_math_functions():
    """(scores, token_rewards, values, mask, group_ids, cfg) → (A [B, T], R [B, T]) per name."""
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=D)
    scores = torch.tensor([1.0, 0.0, 2.0, 5.0], dtype=D)
    ids = [0, 0, 1, 1]
    tok = score_at_last_token(scores, mask)
    # the score sits on each row's last valid token: columns 2, 1, 2, 2
    assert torch.equal(tok, torch.tensor([[0, 0, 1], [0, 0, 0], [0, 0, 2], [0, 0, 5]], dtype=D))
    values = torch.full((4, 3), 0.5, dtype=D)
    cfg = AdvantageConfig(gamma=0.9, lam=0.8, scale="none")
    call = {n: ADVANTAGES.get(n)(scores, tok, values, mask, ids, cfg) for n in ADVANTAGES.names()}
    a, r = call["group"]
    # Dr.GRPO: (1, 0) → ±0.5; (2, 5) → ∓1.5, on every valid token
    assert torch.equal(a, torch.tensor([0.5, -0.5, -1.5, 1.5], dtype=D).unsqueeze(-1) * mask)
    assert torch.equal(r, a)
    a, _ = call["rloo"]
    assert torch.equal(a, torch.tensor([1.0, -1.0, -3.0, 3.0], dtype=D).unsqueeze(-1) * mask)
    a, r = call["gae"]
    raw_a, raw_r = gae(tok, values, mask, 0.9, 0.8)
    assert torch.allclose(a, whiten(raw_a, mask)) and torch.equal(r, raw_r)
    a, _ = call["reinforce_pp"]
    assert torch.allclose(a, reinforce_pp_advantages(tok, mask, 0.9))
    plain = ADVANTAGES.get("gae")(scores, tok, values, mask, ids, AdvantageConfig(whiten=False))
    assert torch.equal(plain[0], gae(tok, values, mask, 1.0, 0.95)[0])
    with pytest.raises(ValueError, match="needs critic values"):
        ADVANTAGES.get("gae")(scores, tok, None, mask, ids, cfg)
    with pytest.raises(ValueError, match="needs group ids"):
        ADVANTAGES.get("rloo")(scores, tok, None, mask, None, cfg)
