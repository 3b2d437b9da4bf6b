"""f-DPG pieces: f′ by hand, log Z, and ∇D_f(π‖p) by enumeration against autograd."""

import math

import pytest
import torch

from rlpost.objective import (
    F_DIVERGENCES,
    FDivergence,
    LogZTracker,
    PromptLogZTracker,
    f_divergence_weights,
    fdpg_loss,
    group_log_z,
    prompt_key,
    register_divergence,
)

D = torch.float64
E = math.e


def test_fprime_hand_values():
    # log t = log π − log P + log Z = (−1 + 1, −2 + 1, −0.5 + 1.5) = (0, −1, 1) with log Z = 0
    pol = torch.tensor([-1.0, -2.0, -0.5], dtype=D)
    tgt = torch.tensor([-1.0, -1.0, -1.5], dtype=D)
    expected = {
        "reverse_kl": [1.0, 0.0, 2.0],  # 1 + log t
        "forward_kl": [-1.0, -E, -1 / E],  # −1/t
        "tv": [0.0, -0.5, 0.5],  # ½ sign(t − 1)
        # ½ log(2t/(1+t)): t = 1 → 0; t = 1/e → ½ log(0.5378828…); t = e → ½ log(1.4621171…)
        "js": [0.0, -0.3100572534791388, 0.18994274652086124],
    }
    for div, want in expected.items():
        w, log_z = f_divergence_weights(pol, tgt, div, log_z=0.0)
        assert torch.allclose(w, torch.tensor(want, dtype=D)), div
        assert log_z.item() == 0.0


def test_log_z_estimate_and_clamp_by_hand():
    # π = (½, ¼), P = (1, 2): P/π = (2, 8) → Z ≈ mean = 5
    pol = torch.log(torch.tensor([0.5, 0.25], dtype=D))
    tgt = torch.log(torch.tensor([1.0, 2.0], dtype=D))
    w, log_z = f_divergence_weights(pol, tgt, "reverse_kl")
    assert log_z.item() == pytest.approx(math.log(5.0))
    # t = π·Z/P = (2.5, 0.625) → 1 + log t = (1.916290731874155, 0.5299963707542644)
    assert torch.allclose(w, torch.tensor([1.916290731874155, 0.5299963707542644], dtype=D))
    # log t = ∓100 is clamped to ∓20: −1/t = −e^20 and −e^−20 stay finite
    w, _ = f_divergence_weights(
        torch.zeros(2, dtype=D), torch.tensor([100.0, -100.0], dtype=D), "forward_kl", log_z=0.0
    )
    assert torch.allclose(w, torch.tensor([-485165195.4097903, -2.061153622438558e-09], dtype=D))


def test_log_z_importance_sampling_converges():
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(12, generator=g, dtype=D), 0)
    log_p_unnorm = torch.randn(12, generator=g, dtype=D) + 3.0
    y = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    _, log_z = f_divergence_weights(pi.log()[y], log_p_unnorm[y], "js")
    exact = torch.logsumexp(log_p_unnorm, 0).item()
    print(f"\nIS log Z error (200k samples): {abs(log_z.item() - exact):.2e}")
    assert log_z.item() == pytest.approx(exact, abs=0.02)


def test_log_z_tracker_averages_z_not_log_z():
    tr = LogZTracker(momentum=0.5)
    assert tr.value is None
    assert tr.update(math.log(2.0)) == pytest.approx(math.log(2.0))
    assert tr.update(torch.tensor(math.log(4.0))) == pytest.approx(math.log(3.0))  # ½·2 + ½·4
    tr2 = LogZTracker()
    tr2.load_state_dict(tr.state_dict())
    assert tr2.value == pytest.approx(math.log(3.0)) and tr2.momentum == 0.5


def test_fdpg_loss_hand_values():
    logp = torch.tensor([-1.0, -2.0, -3.0], dtype=D, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 6.0], dtype=D)
    loss, m = fdpg_loss(logp, w)
    # baseline 3 → (w − b) = (−2, −1, 3) → Σ(w − b)·logp = 2 + 2 − 9 = −5 → /3
    assert loss.item() == pytest.approx(-5 / 3) and m["fdpg_baseline"].item() == 3.0
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([-2.0, -1.0, 3.0], dtype=D) / 3)
    assert fdpg_loss(logp, w, num_seqs=5)[0].item() == pytest.approx(-1.0)
    assert fdpg_loss(logp, w, baseline=0.0)[0].item() == pytest.approx((-1 - 4 - 18) / 3)


# f written out here, independently of the library: D_f(π‖p) = Σ_y p(y)·f(π(y)/p(y))
F_OF_T = {
    "reverse_kl": lambda t: t * torch.log(t),
    "forward_kl": lambda t: -torch.log(t),
    "tv": lambda t: 0.5 * (t - 1).abs(),
    "js": lambda t: 0.5 * (t * torch.log(t) - (1 + t) * torch.log((1 + t) / 2)),
}


@pytest.mark.parametrize("div", sorted(F_OF_T))
def test_expected_fdpg_gradient_equals_exact_divergence_gradient(div):
    g = torch.Generator().manual_seed(7)
    k = 15
    theta = torch.randn(k, generator=g, dtype=D).requires_grad_(True)
    log_p_unnorm = torch.randn(k, generator=g, dtype=D) + 2.0  # unnormalised target log P
    log_z = torch.logsumexp(log_p_unnorm, 0)
    p = (log_p_unnorm - log_z).exp()

    pi = torch.softmax(theta, 0)
    exact = torch.autograd.grad((p * F_OF_T[div](pi / p)).sum(), theta)[0]

    logp = torch.log_softmax(theta, 0)
    w = logp.exp().detach()
    fprime, _ = f_divergence_weights(logp, log_p_unnorm, div, log_z=log_z)
    # Σ_y π(y)·(f′(t_y) − b)·∇log π(y), through fdpg_loss: weights K·π·(f′ − b), baseline 0
    b = (w * fprime).sum()
    loss, _ = fdpg_loss(logp, k * w * (fprime - b), baseline=0.0)
    est = torch.autograd.grad(loss, theta)[0]
    err = (est - exact).abs().max().item()
    print(f"\nf-DPG {div}: max |E[f′∇log π] − ∇D_f| = {err:.2e}")
    assert err < 1e-12
    assert exact.abs().max() > 1e-3  # a non-trivial gradient


def test_divergence_registry():
    assert set(F_DIVERGENCES) >= {"reverse_kl", "forward_kl", "tv", "js"}
    register_divergence(
        "test_sq",
        FDivergence(f=lambda lt: torch.expm1(lt) ** 2, fprime=lambda lt: 2 * torch.expm1(lt)),
        overwrite=True,
    )
    w, _ = f_divergence_weights(torch.zeros(1), torch.zeros(1), "test_sq", log_z=math.log(2.0))
    assert w.item() == pytest.approx(2.0)  # t = 2 → 2(t − 1)


def test_group_log_z_per_prompt_by_hand():
    # prompt 7: P/π = (2, 8) → Z = 5; prompt 3: P/π = (e^1,) → log Z = 1; prompt 7 again last
    pol = torch.log(torch.tensor([0.5, 1.0, 0.25], dtype=D))
    tgt = torch.tensor([0.0, 1.0, math.log(2.0)], dtype=D)
    got = group_log_z(pol, tgt, [7, 3, 7])
    assert torch.allclose(got, torch.tensor([math.log(5.0), 1.0, math.log(5.0)], dtype=D))
    # string and tensor ids group the same way; huge log-ratios stay finite (max-shifted)
    assert torch.allclose(group_log_z(pol, tgt, ["a", "b", "a"]), got)
    assert torch.allclose(group_log_z(pol, tgt, torch.tensor([7, 3, 7])), got)
    big = group_log_z(torch.zeros(2, dtype=D), torch.tensor([1000.0, 1000.0], dtype=D), [0, 0])
    assert torch.allclose(big, torch.tensor([1000.0, 1000.0], dtype=D))


def test_weights_take_a_per_row_log_z():
    pol = torch.tensor([-1.0, -2.0, -0.5], dtype=D)
    tgt = torch.tensor([-1.0, -1.0, -1.5], dtype=D)
    log_z = torch.tensor([0.0, 1.0, -1.0], dtype=D)
    w, used = f_divergence_weights(pol, tgt, "reverse_kl", log_z=log_z)
    # log t = log π − log P + log Z = (0, −1 + 1, 1 − 1) = (0, 0, 0) → 1 + log t = 1
    assert torch.allclose(w, torch.ones(3, dtype=D)) and torch.equal(used, log_z)
    with pytest.raises(ValueError, match="log_z has shape"):
        f_divergence_weights(pol, tgt, "reverse_kl", log_z=torch.zeros(2, dtype=D))


def test_per_row_baseline_in_fdpg_loss():
    seq = torch.tensor([-1.0, -2.0, -3.0], dtype=D, requires_grad=True)
    w = torch.tensor([1.0, 3.0, 5.0], dtype=D)
    loss, m = fdpg_loss(seq, w, torch.tensor([2.0, 2.0, 5.0], dtype=D))
    # ((1 − 2)(−1) + (3 − 2)(−2) + 0)/3 = −1/3
    assert loss.item() == pytest.approx(-1 / 3)
    assert m["fdpg_baseline"].item() == pytest.approx(3.0)


def test_prompt_log_z_tracker_per_key():
    t = PromptLogZTracker(momentum=0.5)
    out = t.update(["a", "b", "a"], torch.tensor([0.0, 2.0, 0.0], dtype=D))
    assert out.tolist() == [0.0, 2.0, 0.0]  # first visits taken as they are
    out = t.update(["a"], torch.tensor([math.log(3.0)], dtype=D))
    assert out.item() == pytest.approx(math.log(0.5 * 1 + 0.5 * 3))  # averaged on Z, per key
    assert t.table["b"] == 2.0
    fresh = PromptLogZTracker(0.5)
    fresh.load_state_dict(t.state_dict())
    assert fresh.table == t.table
    assert prompt_key("x") == prompt_key("x") != prompt_key("y") and len(prompt_key("x")) == 16
