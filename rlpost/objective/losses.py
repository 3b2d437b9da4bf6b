"""Token-level losses: policy-gradient surrogates (a registry), clipped value loss, SFT and KD."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlpost.objective.aggregate import Count, aggregate, masked_mean
from rlpost.objective.kl import kl_estimate
from rlpost.registry import Registry

LOG_RATIO_CLAMP = 20.0
DEFAULT_DUAL_CLIP = 3.0  # Ye et al. 2020's c for the 'dual_clip' policy loss when none is set


def sequence_logp(logp: Tensor, mask: Tensor) -> Tensor:
    """log π(y) = Σ_t m·logp_t: the sequence log-probability used by DPO and f-DPG."""
    return (logp * mask.to(logp.dtype)).sum(-1)


def _token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Accept per-sequence [B] or per-token [B, T] advantages."""
    a = advantages.to(like.dtype)
    return a.unsqueeze(-1).expand_as(like) if a.dim() == like.dim() - 1 else a


def clipped_pg_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO surrogate −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), optional dual clip, aggregated.

    The log-ratio is clamped to ±log_ratio_clamp so stale or corrupt log-probs cannot give inf.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    adv = _token_advantages(advantages, logp).detach()
    log_ratio = (logp - old_logp.detach()).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics = {"clip_frac": masked_mean((clipped > unclipped).to(logp.dtype), mask)}
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual, bound, per_token)
        metrics["dual_clip_frac"] = masked_mean(dual.to(logp.dtype), mask)
    loss = aggregate(per_token, mask, agg, num_tokens, num_seqs, max_len)
    metrics["approx_kl"] = masked_mean(kl_estimate(logp.detach(), old_logp.detach(), "k3"), mask)
    return loss, metrics


def truncated_is_weights(
    old_logp: Tensor, behav_logp: Tensor, mask: Tensor, cap: float = 2.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token min(π_old/μ, C) for samples drawn by a behaviour policy μ (an engine running
    older weights, or a kernel that rounds differently) while the ratio's π_old is the learner's
    own policy before this step: truncation keeps the variance bounded at the price of a small
    bias (Ionides 2008; the TIS correction of one-step-off RL pipelines). No gradient."""
    if cap <= 0:
        raise ValueError(f"importance-weight cap must be > 0, got {cap}")
    log_w = (old_logp.detach() - behav_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    raw = torch.exp(log_w)
    weights = raw.clamp(max=cap)
    return weights, {
        "is_weight_mean": masked_mean(weights, mask),
        "is_clip_frac": masked_mean((raw > cap).to(weights.dtype), mask),
    }


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    agg: str = "token-mean",
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO critic loss ½·max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²); clip=None: plain."""
    ret = returns.detach()
    err = (values - ret) ** 2
    if clip is None:
        per_token, frac = 0.5 * err, torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        old = old_values.detach()
        err_clipped = (old + (values - old).clamp(-clip, clip) - ret) ** 2
        per_token = 0.5 * torch.maximum(err, err_clipped)
        frac = masked_mean((err_clipped > err).to(values.dtype), mask)
    loss = aggregate(per_token, mask, agg, num_tokens, num_seqs, max_len)
    return loss, {"vf_clip_frac": frac, "value_error": masked_mean(err.detach(), mask)}


def sft_loss(
    logp: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood of the kept completions (SuperHF, SFT warm-up)."""
    loss = aggregate(-logp, mask, agg, num_tokens, num_seqs, max_len)
    return loss, {"nll": masked_mean(-logp.detach(), mask)}


def kd_loss(
    logp: Tensor,
    teacher_logp: Tensor,
    mask: Tensor,
    kind: str = "k2",
    agg: str = "token-mean",
    *,
    beta: float = 1.0,
    clamp: float | None = 20.0,
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KDRL: β·reverse KL(π‖teacher) on the student's own samples (k2: exact on-policy gradient)."""
    k = kl_estimate(logp, teacher_logp.detach(), kind, clamp)
    loss = beta * aggregate(k, mask, agg, num_tokens, num_seqs, max_len)
    return loss, {"kd_kl": masked_mean(k.detach(), mask)}


# ---------------------------------------------------------------------------------------------
# Policy losses, one signature: (logp, old_logp, advantages, mask, cfg, counts) → (loss, metrics).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossConfig:
    """The knobs a policy loss may read (each reads only its own)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None  # 'clipped': off when None; 'dual_clip': 3.0 when None
    agg: str = "token-mean"


PolicyLossFn = Callable[
    [Tensor, Tensor, Tensor, Tensor, PolicyLossConfig, dict], tuple[Tensor, dict[str, Tensor]]
]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


@register_policy_loss("clipped")
def _clipped(
    logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, cfg: PolicyLossConfig, counts: dict
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (dual clip too when cfg.dual_clip is set)."""
    return clipped_pg_loss(
        logp, old, adv, mask, cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.agg, **counts
    )


@register_policy_loss("dual_clip")
def _dual_clip(
    logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, cfg: PolicyLossConfig, counts: dict
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dual-clip PPO (Ye et al. 2020): negative-advantage losses bounded by −c·A."""
    c = cfg.dual_clip or DEFAULT_DUAL_CLIP
    return clipped_pg_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, c, cfg.agg, **counts)


def _pg_metrics(logp: Tensor, old: Tensor, mask: Tensor) -> dict[str, Tensor]:
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return {
        "clip_frac": zero,
        "approx_kl": masked_mean(kl_estimate(logp.detach(), old.detach(), "k3"), mask),
    }


@register_policy_loss("reinforce")
def _reinforce(
    logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, cfg: PolicyLossConfig, counts: dict
) -> tuple[Tensor, dict[str, Tensor]]:
    """Vanilla policy gradient −A·log π: on-policy only (no ratio, no clip)."""
    a = _token_advantages(adv, logp).detach()
    loss = aggregate(-a * logp, mask, cfg.agg, **counts)
    return loss, _pg_metrics(logp, old, mask)


@register_policy_loss("importance_weighted")
def _importance_weighted(
    logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, cfg: PolicyLossConfig, counts: dict
) -> tuple[Tensor, dict[str, Tensor]]:
    """−ρ·A with the unclipped per-token ratio ρ = π/π_old: unbiased off-policy, unbounded."""
    a = _token_advantages(adv, logp).detach()
    ratio = torch.exp((logp - old.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss = aggregate(-a * ratio, mask, cfg.agg, **counts)
    return loss, _pg_metrics(logp, old, mask)


def policy_loss(
    name: str,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
    counts: dict | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy loss registered as ``name``; ``counts`` = global num_tokens/num_seqs/max_len."""
    return POLICY_LOSSES.get(name)(logp, old_logp, advantages, mask, cfg, counts or {})
