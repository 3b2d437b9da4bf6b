"""Clipped policy-gradient, value, SFT and KD losses against hand-computed values."""

import math

import pytest
import torch

from rlpost.objective import (
    POLICY_LOSSES,
    PolicyLossConfig,
    clipped_pg_loss,
    kd_loss,
    policy_loss,
    sequence_logp,
    sft_loss,
    value_loss,
)

D = torch.float64
E20 = 485165195.4097903  # e^20: the ratio after clamping a log-ratio of +50 to +20
EM20 = 2.061153622438558e-09  # e^−20

# one token per row: (ratio ρ, advantage A) → per-token loss max(−ρA, −clip(ρ, 0.8, 1.2)A)
#   (1.5, +1): max(−1.5, −1.2) = −1.2   clipped
#   (1.5, −1): max(+1.5, +1.2) = +1.5
#   (0.5, +1): max(−0.5, −0.8) = −0.5
#   (0.5, −1): max(+0.5, +0.8) = +0.8   clipped
#   (1.1, +2): max(−2.2, −2.2) = −2.2
RATIOS = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=D)
ADV = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=D)


def _pg(ratios, adv, **kw):
    old = torch.zeros(len(ratios), 1, dtype=D)
    logp = torch.log(ratios).unsqueeze(1).requires_grad_(True)
    loss, m = clipped_pg_loss(logp, old, adv, torch.ones_like(old), **kw)
    return loss, m, logp


def test_clipped_pg_hand_values_and_metrics():
    loss, m, logp = _pg(RATIOS, ADV)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5)  # −0.32
    assert m["clip_frac"].item() == pytest.approx(2 / 5)
    # approx KL = mean of k3 with d = old − logp = −log ρ: 1/ρ + log ρ − 1
    #   ρ=1.5: 0.0721317748, ρ=0.5: 0.3068528194, ρ=1.1: 0.0044010889
    assert m["approx_kl"].item() == pytest.approx(0.1524740554650011)
    loss.backward()
    # ∂ℓ/∂logp = −A·ρ where unclipped, 0 where clipped; token-mean divides by 5
    expected = torch.tensor([0.0, 1.5, -0.5, 0.0, -2.2], dtype=D) / 5
    assert torch.allclose(logp.grad.squeeze(1), expected)
    assert not any(v.requires_grad for v in m.values())  # metrics are detached


def test_clip_higher_asymmetric():
    loss, m, _ = _pg(RATIOS[:1], ADV[:1], clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28)  # max(−1.5, −1.28)


def test_log_ratios_of_50_stay_finite():
    # log ρ = ±50 is clamped to ±20 before exp
    ratios_log = torch.tensor([50.0, 50.0, -50.0, -50.0], dtype=D)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=D)
    logp = ratios_log.unsqueeze(1).requires_grad_(True)
    old = torch.zeros_like(logp)
    mask = torch.ones(4, 1, dtype=D)
    per = [
        clipped_pg_loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1])[0].item()
        for i in range(4)
    ]
    # (+50, +1): max(−e^20, −1.2) = −1.2;   (+50, −1): max(e^20, 1.2) = e^20
    # (−50, +1): max(−e^−20, −0.8) = −e^−20; (−50, −1): max(e^−20, 0.8) = 0.8
    assert per == pytest.approx([-1.2, E20, -EM20, 0.8])
    loss, m = clipped_pg_loss(logp, old, adv, mask)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logp.grad).all()
    assert math.isfinite(m["approx_kl"].item())


def test_dual_clip_hand_values():
    # dual clip c = 3 bounds the loss of negative-advantage tokens by −c·A = 3
    log_r = torch.tensor([math.log(5.0), math.log(2.0), math.log(5.0), 50.0, -50.0], dtype=D)
    adv = torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0], dtype=D)
    logp = log_r.unsqueeze(1).requires_grad_(True)
    old, mask = torch.zeros_like(logp), torch.ones_like(logp)
    per = [
        clipped_pg_loss(
            logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], dual_clip=3.0
        )[0].item()
        for i in range(5)
    ]
    # ρ=5, A=−1: min(max(5, 1.2), 3) = 3 (dual active); ρ=2, A=−1: min(2, 3) = 2
    # ρ=5, A=+1: −1.2 (dual only acts on A<0); ρ=e^20, A=−1: 3; ρ=e^−20, A=+1: −e^−20
    assert per == pytest.approx([3.0, 2.0, -1.2, 3.0, -EM20])
    loss, m = clipped_pg_loss(logp, old, adv, mask, dual_clip=3.0)
    assert m["dual_clip_frac"].item() == pytest.approx(2 / 5)
    loss.backward()
    assert logp.grad[0].item() == 0.0  # the dual-clipped constant has no gradient
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_pg_loss(logp, old, adv, mask, dual_clip=0.5)


def test_sequence_and_token_advantages_agree_and_masking():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 4, generator=g, dtype=D)
    old = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=D)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    seq_adv = torch.tensor([1.0, -2.0, 5.0], dtype=D)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        a, _ = clipped_pg_loss(logp, old, seq_adv, mask, agg=agg)
        b, _ = clipped_pg_loss(logp, old, seq_adv[:, None].expand(3, 4), mask, agg=agg)
        assert a.item() == pytest.approx(b.item())
    # masked positions do not matter, even when they hold garbage
    junk = logp.clone()
    junk[mask == 0] = 1e4
    a, m1 = clipped_pg_loss(logp, old, seq_adv, mask)
    b, m2 = clipped_pg_loss(junk, old, seq_adv, mask)
    assert a.item() == pytest.approx(b.item()) and m1["clip_frac"] == m2["clip_frac"]


def test_value_loss_hand_values():
    v = torch.tensor([[1.0, 1.0, 0.5]], dtype=D, requires_grad=True)
    old = torch.tensor([[0.5, 1.2, 0.5]], dtype=D)
    ret = torch.tensor([[2.0, 0.0, 0.4]], dtype=D)
    mask = torch.ones(1, 3)
    loss, m = value_loss(v, old, ret, mask, clip=0.2)
    # tok 0: (1 − 2)² = 1; clipped V = 0.5 + 0.2 = 0.7 → (0.7 − 2)² = 1.69 → ½·1.69 = 0.845
    # tok 1: (1 − 0)² = 1; clipped V = 1.2 − 0.2 = 1.0 → 1 → ½
    # tok 2: (0.5 − 0.4)² = 0.01; clipped V = 0.5 → 0.01 → 0.005
    assert loss.item() == pytest.approx((0.845 + 0.5 + 0.005) / 3)
    assert m["vf_clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # tok 0 uses the clipped branch, whose V − V_old = 0.5 lies outside the clip: no gradient
    assert v.grad[0, 0].item() == 0.0
    loss_nc, _ = value_loss(v, old, ret, mask, clip=None)
    assert loss_nc.item() == pytest.approx((1 + 1 + 0.01) / 2 / 3)
    empty, _ = value_loss(v, old, ret, torch.zeros(1, 3))
    assert empty.item() == 0.0


def test_sft_kd_and_sequence_logp_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    assert sft_loss(logp, mask)[0].item() == pytest.approx(1.5)  # (1 + 2)/2
    assert sft_loss(logp, mask, agg="seq-mean-token-sum")[0].item() == pytest.approx(3.0)
    assert sequence_logp(logp, torch.tensor([[0, 1, 1]])).item() == -5.0
    teacher = torch.tensor([[-1.5, -1.0, 0.0]], dtype=D)
    # d = teacher − logp = (−0.5, 1): k2 = (0.125, 0.5) → mean 0.3125; β = 0.5 → 0.15625
    loss, m = kd_loss(logp, teacher, mask, beta=0.5)
    assert loss.item() == pytest.approx(0.15625) and m["kd_kl"].item() == pytest.approx(0.3125)
    # k1 = (0.5, −1) → mean −0.25
    assert kd_loss(logp, teacher, mask, kind="k1")[0].item() == pytest.approx(-0.25)
    assert kd_loss(logp, teacher, mask, num_tokens=4)[0].item() == pytest.approx(0.625 / 4)


def test_policy_loss_registry_by_hand():
    """The five (ρ, A) rows above through each registered policy loss (token-mean of 5)."""
    old = torch.zeros(5, 1, dtype=D)
    logp = torch.log(RATIOS).unsqueeze(1)
    mask = torch.ones_like(old)
    cfg = PolicyLossConfig()
    got = {n: policy_loss(n, logp, old, ADV, mask, cfg)[0].item() for n in POLICY_LOSSES}
    assert got["clipped"] == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5)
    # dual clip with the default c = 3: no −c·A = 3 bound is reached by 1.5 or 0.8
    assert got["dual_clip"] == pytest.approx(got["clipped"])
    # importance weighted −ρA: (−1.5 + 1.5 − 0.5 + 0.5 − 2.2)/5
    assert got["importance_weighted"] == pytest.approx(-2.2 / 5)
    # reinforce −A·log π: −(log 1.5 − log 1.5 + log 0.5 − log 0.5 + 2·log 1.1)/5
    assert got["reinforce"] == pytest.approx(-2 * math.log(1.1) / 5)
    # the dual clip bites at c = 1.2 on (1.5, −1): min(1.5, 1.2) = 1.2
    low_c = PolicyLossConfig(dual_clip=1.2)
    dual, m = policy_loss("dual_clip", logp, old, ADV, mask, low_c)
    assert dual.item() == pytest.approx((-1.2 + 1.2 - 0.5 + 0.8 - 2.2) / 5)
    assert m["dual_clip_frac"].item() == pytest.approx(1 / 5)
