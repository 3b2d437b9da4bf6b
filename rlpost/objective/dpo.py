"""Preference losses on sequence log-ratios h = (pc − rc) − (pr − rr): DPO, cDPO, IPO, hinge."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlpost.registry import Registry

PrefLoss = Callable[[Tensor, float, float], Tensor]
PREFERENCE_LOSSES: Registry[PrefLoss] = Registry("preference loss")
register_preference_loss = PREFERENCE_LOSSES.register


@register_preference_loss("sigmoid")
def _sigmoid(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """DPO −log σ(βh); cDPO mixes in the flipped label with weight ε (noisy preferences)."""
    z = beta * h
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _no_smoothing(kind: str, label_smoothing: float) -> None:
    if label_smoothing:
        raise ValueError(f"label_smoothing is only defined for the sigmoid loss, not {kind!r}")


@register_preference_loss("ipo")
def _ipo(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """IPO (h − 1/(2β))²: regresses the margin to a finite target, so it cannot overfit to ∞."""
    _no_smoothing("ipo", label_smoothing)
    return (h - 1.0 / (2.0 * beta)) ** 2


@register_preference_loss("hinge")
def _hinge(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """max(0, 1 − βh): SLiC-style margin loss."""
    _no_smoothing("hinge", label_smoothing)
    return torch.relu(1.0 - beta * h)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair preference losses [N] and metrics (reward_acc, margin, chosen/rejected rewards)."""
    chosen = policy_chosen - ref_chosen.detach()
    rejected = policy_rejected - ref_rejected.detach()
    h = chosen - rejected
    losses = PREFERENCE_LOSSES.get(kind)(h, beta, label_smoothing)
    hd = h.detach()
    metrics = {
        "reward_acc": (hd > 0).to(hd.dtype).mean(),
        "margin": (beta * hd).mean(),
        "chosen_reward": (beta * chosen.detach()).mean(),
        "rejected_reward": (beta * rejected.detach()).mean(),
    }
    return losses, metrics
