"""Advantage estimators: group-normalised (GRPO, Dr.GRPO), RLOO, GAE, REINFORCE++, whitening.

All of them run without gradient: advantages are constants in the surrogate losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rlpost.registry import Registry

ADVANTAGES: Registry[Callable[..., Any]] = Registry("advantage estimator")
register_advantage = ADVANTAGES.register

GroupIds = Tensor | Sequence[Any]


def _group_index(group_ids: GroupIds, device: torch.device) -> tuple[Tensor, int]:
    """Map arbitrary group ids (ints, strings, …) to 0..G−1 indices."""
    if isinstance(group_ids, Tensor):
        _, idx = torch.unique(group_ids.to(device), return_inverse=True)
        return idx, int(idx.max()) + 1 if idx.numel() else 0
    table: dict[Any, int] = {}
    idx = [table.setdefault(g, len(table)) for g in group_ids]
    return torch.tensor(idx, dtype=torch.long, device=device), len(table)


def _group_stats(scores: Tensor, idx: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row group size, group sum, and whether all scores of the row's group are equal."""
    size = torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add_(
        0, idx, torch.ones_like(scores)
    )
    total = torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add_(0, idx, scores)
    hi = torch.full((n,), -torch.inf, dtype=scores.dtype, device=scores.device)
    lo = torch.full((n,), torch.inf, dtype=scores.dtype, device=scores.device)
    hi = hi.scatter_reduce(0, idx, scores, "amax")
    lo = lo.scatter_reduce(0, idx, scores, "amin")
    return size[idx], total[idx], (hi == lo)[idx], idx


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


@register_advantage("group")
@torch.no_grad()
def group_advantages(
    scores: Tensor, group_ids: GroupIds, scale: str = "std", eps: float = 1e-6
) -> Tensor:
    """GRPO: (r − mean_g)/(std_g + ε) with unbiased std; scale='none' is Dr.GRPO (r − mean_g).

    A group whose scores are all equal (including a group of one) gets exactly 0.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"unknown group scale {scale!r}; known: none, std")
    r = _as_float(scores)
    idx, n = _group_index(group_ids, r.device)
    size, total, same, idx = _group_stats(r, idx, n)
    adv = r - total / size
    if scale == "std":
        sq = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, idx, adv * adv)[idx]
        std = torch.sqrt(sq / (size - 1).clamp_min(1))
        adv = adv / (std + eps)
    return torch.where(same, torch.zeros_like(adv), adv)


@register_advantage("rloo")
@torch.no_grad()
def rloo_advantages(scores: Tensor, group_ids: GroupIds) -> Tensor:
    """REINFORCE leave-one-out: r_i − mean_{j≠i} r_j (unbiased baseline); a group of 1 → 0."""
    r = _as_float(scores)
    idx, n = _group_index(group_ids, r.device)
    size, total, same, _ = _group_stats(r, idx, n)
    adv = r - (total - r) / (size - 1).clamp_min(1)
    return torch.where(same, torch.zeros_like(adv), adv)


def broadcast_to_tokens(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """Give every valid token of a row its sequence advantage (0 on padding)."""
    return seq_adv.unsqueeze(-1) * mask.to(seq_adv.dtype)


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Σ m·x, Σ m·x², Σ m): all-reducible so whitening can use global-batch statistics."""
    m = mask.to(torch.float64)
    x64 = x.to(torch.float64)
    return (x64 * m).sum(), (x64 * x64 * m).sum(), m.sum()


@torch.no_grad()
def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    moments: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """(x − mean)/sqrt(var + ε) over valid positions (population var); 0 on padding.

    Pass ``moments`` (summed :func:`masked_moments` of every rank) to whiten over the global batch.
    """
    s, s2, n = masked_moments(x, mask) if moments is None else moments
    n = torch.as_tensor(n, dtype=torch.float64).clamp_min(1)
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0)
    out = x.to(torch.float64)
    out = ((out - mean) if shift_mean else out) * torch.rsqrt(var + eps)
    return (out * mask.to(torch.float64)).to(x.dtype)


@register_advantage("gae")
@torch.no_grad()
def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over valid tokens: δ = r + γV_next − V, A = δ + γλA_next; V after the last token = 0.

    Returns (advantages, returns = A + V), both 0 on masked positions.
    """
    r = _as_float(token_rewards)
    v = values.to(r.dtype)
    valid = mask.bool()
    next_v = torch.zeros(r.shape[:-1], dtype=r.dtype, device=r.device)
    adv = torch.zeros_like(next_v)
    out = torch.zeros_like(r)
    for t in range(r.shape[-1] - 1, -1, -1):
        a = r[..., t] + gamma * next_v - v[..., t] + gamma * lam * adv
        m = valid[..., t]
        adv = torch.where(m, a, adv)
        next_v = torch.where(m, v[..., t], next_v)
        out[..., t] = torch.where(m, a, torch.zeros_like(a))
    returns = (out + v) * valid.to(r.dtype)
    return out, returns


@torch.no_grad()
def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = r_t + γ·G_next over valid tokens (masked positions skipped, 0 in the output)."""
    r = _as_float(token_rewards)
    valid = mask.bool()
    g = torch.zeros(r.shape[:-1], dtype=r.dtype, device=r.device)
    out = torch.zeros_like(r)
    for t in range(r.shape[-1] - 1, -1, -1):
        new = r[..., t] + gamma * g
        m = valid[..., t]
        g = torch.where(m, new, g)
        out[..., t] = torch.where(m, new, torch.zeros_like(new))
    return out


@register_advantage("reinforce_pp")
@torch.no_grad()
def reinforce_pp_advantages(
    token_rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    moments: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """REINFORCE++: discounted returns of the KL-shaped token rewards, whitened over the batch.

    For global whitening pass ``moments`` = all-reduced :func:`masked_moments` of the returns.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return whiten(returns, mask, moments=moments)
