"""Preference losses by hand: DPO (+ cDPO label smoothing), IPO, hinge."""

import pytest
import torch

from rlpost.objective import PREFERENCE_LOSSES, dpo_loss, dpo_pair_loss, real_pairs

D = torch.float64
# pair 0: chosen log-ratio −1 − (−1.5) = 0.5, rejected −2 − (−1.5) = −0.5 → h = 1
# pair 1: chosen −3 − (−2) = −1, rejected −1 − (−2) = 1 → h = −2
PC, PR = torch.tensor([-1.0, -3.0], dtype=D), torch.tensor([-2.0, -1.0], dtype=D)
RC, RR = torch.tensor([-1.5, -2.0], dtype=D), torch.tensor([-1.5, -2.0], dtype=D)


def test_sigmoid_hand_values_and_metrics():
    losses, m = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # −log σ(0.1) = log(1 + e^−0.1) = 0.6443966600735709; −log σ(−0.2) = log(1 + e^0.2)
    assert torch.allclose(losses, torch.tensor([0.6443966600735709, 0.7981388693815918], dtype=D))
    assert m["reward_acc"].item() == 0.5
    assert m["margin"].item() == pytest.approx(0.1 * (1 - 2) / 2)
    assert m["chosen_reward"].item() == pytest.approx(0.1 * (0.5 - 1) / 2)


def test_label_smoothing_cdpo():
    losses, _ = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.1)
    # 0.9·log(1 + e^−0.1) + 0.1·log(1 + e^0.1); the two logs differ by exactly 0.1
    # → 0.6443966600735709 + 0.1·0.1 = 0.6543966600735709
    assert losses.item() == pytest.approx(0.6543966600735709)


def test_ipo_and_hinge_hand_values():
    ipo, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, kind="ipo")
    assert torch.allclose(ipo, torch.tensor([16.0, 49.0], dtype=D))  # (1 − 5)², (−2 − 5)²
    hinge, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, kind="hinge")
    assert torch.allclose(hinge, torch.tensor([0.9, 1.2], dtype=D))  # 1 − 0.1, 1 + 0.2
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, kind="ipo", label_smoothing=0.1)
    with pytest.raises(KeyError, match="hinge, ipo, sigmoid"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, kind="kto")
    assert "sigmoid" in PREFERENCE_LOSSES


def test_extreme_margins_are_stable_and_gradient_flows_to_policy_only():
    pc = torch.tensor([1000.0, -1000.0], dtype=D, requires_grad=True)
    pr = torch.zeros(2, dtype=D, requires_grad=True)
    rc = torch.zeros(2, dtype=D, requires_grad=True)
    losses, _ = dpo_loss(pc, pr, rc, torch.zeros(2, dtype=D), beta=1.0)
    assert torch.allclose(losses, torch.tensor([0.0, 1000.0], dtype=D))  # no inf from log σ
    losses.sum().backward()
    # d/dpc −log σ(h) = −σ(−h): 0 for h = 1000, −1 for h = −1000
    assert torch.allclose(pc.grad, torch.tensor([0.0, -1.0], dtype=D))
    assert rc.grad is None  # the reference is a constant


def pair_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PC/PR/RC/RR as adjacent rows (2i chosen, 2i+1 rejected), each log-prob split over two
    response tokens after a prompt token; then one all-zero-mask padding pair."""
    pol = [PC[0], PR[0], PC[1], PR[1], -9.0, -9.0]
    ref = [RC[0], RR[0], RC[1], RR[1], -9.0, -9.0]
    logp = torch.tensor([[-5.0, float(p) / 2, float(p) / 2] for p in pol], dtype=D)
    ref_logp = torch.tensor([[-5.0, float(r) / 2, float(r) / 2] for r in ref], dtype=D)
    mask = torch.tensor([[0.0, 1.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]] * 2, dtype=D)
    return logp, ref_logp, mask


def test_pair_loss_skips_padding_and_divides_by_the_global_pairs():
    logp, ref_logp, mask = pair_rows()
    per_pair = [0.6443966600735709, 0.7981388693815918]  # as in the sigmoid test above
    loss, m = dpo_pair_loss(logp, ref_logp, mask, beta=0.1)
    assert loss.item() == pytest.approx(sum(per_pair) / 2)  # 2 real pairs, padding skipped
    assert m["pairs"].item() == 2 and m["reward_acc"].item() == 0.5
    loss, _ = dpo_pair_loss(logp, ref_logp, mask, beta=0.1, num_pairs=8)
    assert loss.item() == pytest.approx(sum(per_pair) / 8)
    assert real_pairs(mask).tolist() == [True, True, False]


def test_pair_loss_of_only_padding_is_a_connected_zero_without_nan():
    logp, ref_logp, mask = pair_rows()
    logp = logp[4:].clone().requires_grad_(True)
    loss, m = dpo_pair_loss(logp, ref_logp[4:], mask[4:], beta=0.1, kind="ipo", num_pairs=3)
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in m.values())
    loss.backward()  # the graph reaches the policy, so every rank can run backward
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    with pytest.raises(ValueError, match="adjacent"):
        dpo_pair_loss(logp[:1], ref_logp[:1], mask[:1], beta=0.1)
