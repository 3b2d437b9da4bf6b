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


def real_pairs(mask: Tensor) -> Tensor:
    """[N/2] bool: pair i (rows 2i, 2i+1) is real iff both rows have response tokens.

    Learner padding and "nothing to train" placeholder pairs carry an all-zero mask.
    """
    tokens = mask.sum(-1)
    return (tokens[0::2] > 0) & (tokens[1::2] > 0)


def dpo_pair_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    num_pairs: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The preference loss of a micro-batch of adjacent pairs (row 2i chosen, 2i+1 rejected).

    ``logp`` / ``ref_logp`` are per-token [2P, T] and ``mask`` the response mask. Pairs with an
    empty row are skipped; the loss is Σ (per-pair loss) / ``num_pairs`` (the global pair count
    of the mini-batch, default: this call's real pairs), so summing micro-batches and ranks
    gives the mini-batch mean. With no real pair the loss is a graph-connected 0 and every
    metric 0 (never NaN). Metrics: ``pairs`` (real pairs here) and those of :func:`dpo_loss`.
    """
    if logp.shape[0] % 2:
        raise ValueError(f"dpo_pair_loss needs adjacent chosen/rejected rows, got {logp.shape[0]}")
    if not logp.is_floating_point():
        logp = logp.float()
    m = mask.to(logp.dtype)
    pol = (logp * m).sum(-1)
    ref = (ref_logp.to(logp.dtype) * m).sum(-1)
    real = real_pairs(mask)
    pairs = real.sum().to(logp.dtype)
    if not bool(real.any()):
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        metrics = {k: zero for k in ("reward_acc", "margin", "chosen_reward", "rejected_reward")}
        return (logp * 0.0).sum(), {"pairs": zero, **metrics}
    losses, metrics = dpo_loss(
        pol[0::2][real],
        pol[1::2][real],
        ref[0::2][real],
        ref[1::2][real],
        beta,
        kind,
        label_smoothing,
    )
    n = (
        pairs
        if num_pairs is None
        else torch.as_tensor(num_pairs, dtype=logp.dtype, device=logp.device)
    )
    loss = losses.sum() / n.clamp_min(1)
    return loss, {"pairs": pairs, **metrics}
