"""Advantage estimators: group-normalised (GRPO, Dr.GRPO), RLOO, GAE, REINFORCE++, whitening.

All of them run without gradient: advantages are constants in the surrogate losses.

The math functions keep their natural arguments; the ``ADVANTAGES`` registry holds one uniform
entry per estimator, ``fn(scores, token_rewards, values, mask, group_ids, cfg) -> (A, R)``, so an
algorithm dispatches on ``algorithm.advantage`` without knowing which inputs an estimator reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlpost.groups import groups
from rlpost.registry import Registry

GroupIds = Tensor | Sequence[Any]


@dataclass(frozen=True)
class AdvantageConfig:
    """The knobs an estimator may read (each reads only its own)."""

    gamma: float = 1.0  # gae, reinforce_pp: discount
    lam: float = 0.95  # gae: λ
    scale: str = "std"  # group: 'std' (GRPO) or 'none' (Dr.GRPO)
    eps: float = 1e-6  # group: added to the std
    whiten: bool = True  # gae: whiten A over the valid tokens of the batch


AdvantageFn = Callable[
    [Tensor, Tensor, Tensor | None, Tensor, GroupIds | None, AdvantageConfig], tuple[Tensor, Tensor]
]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def register_advantage(
    name: str,
    obj: AdvantageFn | None = None,
    *,
    needs_values: bool = False,
    overwrite: bool = False,
) -> Any:
    """Register a uniform estimator (decorator without ``obj``).

    ``needs_values=True`` makes an algorithm that uses it ask for a critic (values [B, T]).
    """

    def add(fn: AdvantageFn) -> AdvantageFn:
        fn.needs_values = needs_values  # type: ignore[attr-defined]
        return ADVANTAGES.register(name, fn, overwrite=overwrite)

    return add if obj is None else add(obj)


def advantage_needs_values(name: str) -> bool:
    """Whether the estimator registered (or loadable) as ``name`` reads critic values."""
    return bool(getattr(ADVANTAGES.get(name), "needs_values", False))


def group_index(group_ids: GroupIds, device: torch.device | None = None) -> tuple[Tensor, int]:
    """Map arbitrary group ids (ints, strings, …) to 0..G−1 indices."""
    if isinstance(group_ids, Tensor):
        _, idx = torch.unique(group_ids.to(device), return_inverse=True)
        return idx, int(idx.max()) + 1 if idx.numel() else 0
    idx = torch.empty(len(group_ids), dtype=torch.long)
    table = groups(group_ids)
    for g, rows in enumerate(table.values()):
        idx[rows] = g
    return idx.to(device), len(table)


_group_index = group_index


@torch.no_grad()
def group_mean(x: Tensor, group_ids: GroupIds) -> Tensor:
    """[N]: each row gets the mean of x over its group."""
    idx, n = group_index(group_ids, x.device)
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, idx, x)
    size = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, idx, torch.ones_like(x))
    return (total / size)[idx]


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


# ---------------------------------------------------------------------------------------------
# The uniform registry entries: (scores, token_rewards, values, mask, group_ids, cfg) → (A, R).
# scores [B] is each row's sequence reward and token_rewards [B, T] the same reward per token
# (the score at the last valid token, minus β·KL per token when the KL is in the reward);
# values [B, T] come from a critic (None without one). A is per token; R is the critic's
# target (outcome estimators return A itself, as there is no value to add).
# ---------------------------------------------------------------------------------------------


def _need_groups(name: str, group_ids: GroupIds | None) -> GroupIds:
    if group_ids is None:
        raise ValueError(f"advantage '{name}' compares samples of one prompt: needs group ids")
    return group_ids


@register_advantage("group")
def group_estimator(
    scores: Tensor,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_ids: GroupIds | None,
    cfg: AdvantageConfig,
) -> tuple[Tensor, Tensor]:
    """GRPO / Dr.GRPO: :func:`group_advantages` on the sequence rewards, on every token."""
    ids = _need_groups("group", group_ids)
    a = broadcast_to_tokens(group_advantages(scores, ids, cfg.scale, cfg.eps), mask)
    return a, a


@register_advantage("rloo")
def rloo_estimator(
    scores: Tensor,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_ids: GroupIds | None,
    cfg: AdvantageConfig,
) -> tuple[Tensor, Tensor]:
    """RLOO: :func:`rloo_advantages` on the sequence rewards, on every token."""
    a = broadcast_to_tokens(rloo_advantages(scores, _need_groups("rloo", group_ids)), mask)
    return a, a


@register_advantage("gae", needs_values=True)
def gae_estimator(
    scores: Tensor,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_ids: GroupIds | None,
    cfg: AdvantageConfig,
) -> tuple[Tensor, Tensor]:
    """PPO: :func:`gae` on the token rewards and critic values; A whitened when cfg.whiten."""
    if values is None:
        raise ValueError("advantage 'gae' needs critic values (the batch has no 'values')")
    adv, returns = gae(token_rewards, values, mask, cfg.gamma, cfg.lam)
    return (whiten(adv, mask) if cfg.whiten else adv), returns


@register_advantage("reinforce_pp")
def reinforce_pp_estimator(
    scores: Tensor,
    token_rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    group_ids: GroupIds | None,
    cfg: AdvantageConfig,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++: :func:`reinforce_pp_advantages` on the token rewards (no critic)."""
    a = reinforce_pp_advantages(token_rewards, mask, cfg.gamma)
    return a, a
