"""KL estimators, controllers and placements: hand values, then exact expectations by enumeration."""

import math

import pytest
import torch

from rlpost.objective import (
    KL_ESTIMATORS,
    exact_kl,
    kl_controller,
    kl_estimate,
    kl_loss,
    kl_penalty_in_reward,
    register_kl_estimator,
    sequence_kl,
)

D = torch.float64


def t(*x):
    return torch.tensor(x, dtype=D)


# ------------------------------------------------------------------ estimators, by hand


def test_estimators_hand_values():
    logp, ref = t(-1.0, -2.0, -0.5), t(-1.5, -1.0, -0.5)
    # d = ref − logp = (−0.5, 1, 0)
    assert torch.allclose(kl_estimate(logp, ref, "k1"), t(0.5, -1.0, 0.0))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), t(0.125, 0.5, 0.0))
    # k3 = e^d − d − 1: e^−0.5 + 0.5 − 1 = 0.1065306597…, e − 2 = 0.7182818284…, 0
    assert torch.allclose(kl_estimate(logp, ref), t(0.10653065971263342, 0.7182818284590451, 0.0))
    # straight-through k3: value of k3
    assert torch.allclose(kl_estimate(logp, ref, "k3_st"), kl_estimate(logp, ref, "k3"))


def test_estimators_clamp_extreme_log_ratios():
    logp, ref = t(0.0, 0.0), t(-50.0, 50.0)  # d = ∓50 → clamped to ∓20
    k3 = kl_estimate(logp, ref, "k3")
    # e^−20 + 20 − 1 = 19.000000002061…; e^20 − 20 − 1 = 485165174.4097903
    assert torch.allclose(k3, t(19.000000002061153, 485165174.4097903))
    assert torch.allclose(kl_estimate(logp, ref, "k1"), t(20.0, -20.0))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), t(200.0, 200.0))
    assert torch.allclose(kl_estimate(logp, ref, "k1", clamp=5.0), t(5.0, -5.0))
    assert torch.isinf(kl_estimate(t(0.0), t(1000.0), "k3", clamp=None)).all()  # why we clamp


def test_estimator_registry_accepts_new_kinds():
    register_kl_estimator("test_abs", lambda d: d.abs(), overwrite=True)
    assert torch.allclose(kl_estimate(t(-1.0), t(-3.0), "test_abs"), t(2.0))
    with pytest.raises(KeyError, match="k1, k2, k3"):
        kl_estimate(t(0.0), t(0.0), "k9")
    assert {"k1", "k2", "k3", "k3_st"} <= set(KL_ESTIMATORS)


# ------------------------------------------------------------------ controllers


def test_fixed_controller():
    c = kl_controller("fixed", beta=0.04)
    assert c.update(123.0, 10) == 0.04 and c.value == 0.04


def test_adaptive_controller_hand_values():
    c = kl_controller("adaptive", init=0.1, target=6.0, horizon=100)
    # KL 9: e = clip(9/6 − 1 = 0.5) = 0.2 → β = 0.1·(1 + 0.2·10/100) = 0.102
    assert c.update(9.0, 10) == pytest.approx(0.102)
    # KL 3: e = clip(−0.5) = −0.2 → β = 0.102·(1 − 0.02) = 0.09996
    assert c.update(torch.tensor(3.0), 10) == pytest.approx(0.09996)
    # KL 6.6: e = 0.1 (inside the clip) → β = 0.09996·(1 + 0.1·50/100) = 0.104958
    assert c.update(6.6, 50) == pytest.approx(0.104958)
    state = c.state_dict()
    c2 = kl_controller({"kind": "adaptive", "init": 1.0, "target": 6.0, "horizon": 100})
    c2.load_state_dict(state)
    assert c2.value == pytest.approx(0.104958)


def test_controllers_say_what_n_steps_counts():
    assert kl_controller("adaptive").unit == "samples"  # Ziegler et al.: horizon in samples
    assert kl_controller("fixed").unit == kl_controller("schedule").unit == "steps"


def test_sequence_kl_sums_tokens():
    logp = torch.tensor([[-1.0, -1.0, -2.0], [-1.0, -3.0, -3.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.5, -1.0], [-9.0, -2.0, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.float64)
    # k1 = logp − ref on valid tokens: row 0: 0.5 − 1 = −0.5; row 1: −1
    assert sequence_kl(logp, ref, mask, "k1").tolist() == [-0.5, -1.0]
    # k3 with d = ref − logp: row 0: (e^−0.5 + 0.5 − 1) + (e^1 − 1 − 1); row 1: e^1 − 2
    k3 = [math.exp(-0.5) - 0.5 + math.e - 2, math.e - 2]
    assert sequence_kl(logp, ref, mask, "k3").tolist() == pytest.approx(k3)


def test_schedule_controller_hand_values():
    lin = kl_controller("schedule", start=0.0, end=0.04, total_steps=100, warmup=0.1)
    seen = {}
    for step in range(151):
        seen[step] = lin.value
        lin.update(None, 1)
    # warm-up holds β_start for the first 0.1·100 = 10 steps, then 90 steps to β_end
    assert seen[0] == 0.0 and seen[9] == 0.0 and seen[10] == 0.0
    assert seen[55] == pytest.approx(0.02)  # (55 − 10)/90 = ½
    assert seen[40] == pytest.approx(0.04 / 3)  # 30/90 = ⅓
    assert seen[100] == pytest.approx(0.04) and seen[150] == pytest.approx(0.04)

    cos = kl_controller(
        "schedule", start=0.0, end=0.04, total_steps=100, shape="cosine", warmup=0.1
    )
    cos.update(None, 40)  # p = ⅓ → (1 − cos(π/3))/2 = ¼ → 0.01
    assert cos.value == pytest.approx(0.01)
    cos.update(None, 15)  # p = ½ → ½ → 0.02
    assert cos.value == pytest.approx(0.02)

    step = kl_controller("schedule", start=0.0, end=0.04, total_steps=100, shape="step", warmup=0.1)
    step.update(None, 9)
    assert step.value == 0.0
    step.update(None, 1)
    assert step.value == 0.04

    kdrl = kl_controller("schedule", start=5e-3, end=1e-3, total_steps=10)  # KDRL anneals down
    kdrl.update(None, 5)
    assert kdrl.value == pytest.approx(3e-3)
    resumed = kl_controller("schedule", start=5e-3, end=1e-3, total_steps=10)
    resumed.load_state_dict(kdrl.state_dict())
    assert resumed.value == pytest.approx(3e-3)

    with pytest.raises(ValueError, match="shape"):
        kl_controller("schedule", shape="zigzag")
    with pytest.raises(KeyError, match="adaptive, fixed, schedule"):
        kl_controller("pid")


# ------------------------------------------------------------------ placements


def test_kl_penalty_in_reward_hand_values():
    # row 0: prompt at col 0, response at cols 1–2, padding at col 3
    # row 1: full row, π = ref; row 2: empty mask (no score can be placed)
    logp = t(0.0, -1.0, -2.0, 0.0).repeat(3, 1)
    ref = torch.stack([t(0.0, -1.5, -1.0, 0.0), logp[1], logp[2]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    rew = kl_penalty_in_reward(t(2.0, 3.0, 5.0), logp, ref, mask, beta=0.1)
    # k1 = logp − ref = (0.5, −1) → −β·k1 = (−0.05, +0.1); the score 2 lands on col 2
    expected = torch.stack([t(0.0, -0.05, 2.1, 0.0), t(0.0, 0.0, 0.0, 3.0), t(0.0, 0.0, 0.0, 0.0)])
    assert torch.allclose(rew, expected)


def test_kl_loss_hand_value_and_empty_mask():
    logp, ref = t(-1.0, -2.0, -0.5).unsqueeze(0), t(-1.5, -1.0, -9.0).unsqueeze(0)
    mask = torch.tensor([[1, 1, 0]])
    loss, m = kl_loss(logp, ref, mask, beta=0.5, kind="k2")
    # k2 = (0.125, 0.5) → mean 0.3125 → ·β = 0.15625
    assert float(loss) == pytest.approx(0.15625) and float(m["kl"]) == pytest.approx(0.3125)
    logp.requires_grad_(True)
    loss, m = kl_loss(logp, ref, torch.zeros_like(mask), beta=0.5)
    loss.backward()
    assert loss.item() == 0.0 and m["kl"].item() == 0.0 and not logp.grad.isnan().any()


def test_exact_kl_hand_value():
    pol, ref = t(0.0, 0.0).view(1, 1, 2), t(0.0, math.log(3.0)).view(1, 1, 2)
    # π = (½, ½), ref = (¼, ¾): ½·ln 2 + ½·ln(2/3) = ½·ln(4/3)
    assert torch.allclose(exact_kl(pol, ref), t(0.14384103622589042).view(1, 1))
    assert float(exact_kl(pol, ref, torch.zeros(1, 1))) == 0.0


# ------------------------------------------------------------------ exact expectations


def _categorical(k: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g, dtype=D).requires_grad_(True)
    ref = torch.log_softmax(torch.randn(k, generator=g, dtype=D), 0)
    return theta, ref


def test_estimators_expectation_equals_exact_kl():
    theta, ref = _categorical()
    logp = torch.log_softmax(theta, 0).detach()
    pi = logp.exp()
    true = float(exact_kl(theta.detach(), ref))  # Σ π (log π − log ref), from full logits
    e_k1 = float((pi * kl_estimate(logp, ref, "k1")).sum())
    e_k3 = float((pi * kl_estimate(logp, ref, "k3")).sum())
    e_k2 = float((pi * kl_estimate(logp, ref, "k2")).sum())
    print(
        f"\nKL={true:.6f}: |E[k1] − KL| = {abs(e_k1 - true):.1e}, |E[k3] − KL| = "
        f"{abs(e_k3 - true):.1e}, E[k2] = {e_k2:.6f} (biased)"
    )
    assert e_k1 == pytest.approx(true, abs=1e-12) and e_k3 == pytest.approx(true, abs=1e-12)
    assert abs(e_k2 - true) > 1e-3  # k2's value is biased: only its gradient is exact


def _expected_grad(theta: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ_y π(y)·∇k(y): the on-policy gradient when samples are drawn from π (weights stopped)."""
    logp = torch.log_softmax(theta, 0)
    surrogate = (logp.exp().detach() * kl_estimate(logp, ref, kind)).sum()
    return torch.autograd.grad(surrogate, theta)[0]


def test_estimator_gradients_by_enumeration():
    theta, ref = _categorical(k=8, seed=3)
    logp = torch.log_softmax(theta, 0)
    reverse = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), theta, retain_graph=True)[0]
    forward = torch.autograd.grad(-(ref.exp() * logp).sum(), theta)[0]  # ∇KL(ref‖π) + const
    g = {k: _expected_grad(theta, ref, k) for k in ("k1", "k2", "k3", "k3_st")}
    print(
        f"\nmax |E[∇k2] − ∇KL(π‖ref)| = {(g['k2'] - reverse).abs().max():.1e}, "
        f"|E[∇k3] − ∇KL(ref‖π)| = {(g['k3'] - forward).abs().max():.1e}, "
        f"|E[∇k3] − ∇KL(π‖ref)| = {(g['k3'] - reverse).abs().max():.2f}"
    )
    assert torch.allclose(g["k2"], reverse, atol=1e-12)  # k2: the reverse-KL gradient
    assert torch.allclose(g["k3_st"], reverse, atol=1e-12)
    assert torch.allclose(g["k3"], forward, atol=1e-12)  # k3 in the loss: the forward-KL one
    assert torch.allclose(g["k1"], torch.zeros_like(theta), atol=1e-12)  # k1: no gradient at all
    assert not torch.allclose(g["k3"], reverse, atol=1e-3)
