"""KL estimators, KL-coefficient controllers and the two KL placements (reward / loss)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from rlpost.objective.aggregate import Count, aggregate, masked_mean
from rlpost.registry import Registry

# ---------------------------------------------------------------------------------------------
# Per-token estimators of KL(π‖ref) from samples of π, as functions of d = ref_logp − logp.
# ---------------------------------------------------------------------------------------------

KL_ESTIMATORS: Registry[Callable[[Tensor], Tensor]] = Registry("KL estimator")
register_kl_estimator = KL_ESTIMATORS.register


@register_kl_estimator("k1")
def _k1(d: Tensor) -> Tensor:
    """−d = log π/ref: unbiased, can be negative; its value is the per-token log-ratio."""
    return -d


@register_kl_estimator("k2")
def _k2(d: Tensor) -> Tensor:
    """½d²: biased value, but its on-policy gradient is exactly ∇KL(π‖ref)."""
    return 0.5 * d * d


@register_kl_estimator("k3")
def _k3(d: Tensor) -> Tensor:
    """exp(d) − d − 1: unbiased, ≥ 0, low variance (expm1 keeps small d exact)."""
    return torch.expm1(d) - d


@register_kl_estimator("k3_st")
def _k3_st(d: Tensor) -> Tensor:
    """k3's value with k2's gradient: the on-policy gradient of k3 alone is ∇KL(ref‖π)."""
    k2 = _k2(d)
    return k2 + (_k3(d) - k2).detach()


def kl_estimate(
    logp: Tensor, ref_logp: Tensor, kind: str = "k3", clamp: float | None = 20.0
) -> Tensor:
    """Per-token estimate of KL(π‖ref) under samples of π; d is clamped so exp cannot overflow."""
    d = ref_logp - logp
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return KL_ESTIMATORS.get(kind)(d)


def sequence_kl(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3", clamp: float | None = 20.0
) -> Tensor:
    """[B] per-sequence KL estimate Σ_t m·k_t: the quantity the adaptive controller steers."""
    return (kl_estimate(logp, ref_logp, kind, clamp) * mask.to(logp.dtype)).sum(-1)


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers.
# ---------------------------------------------------------------------------------------------


class KLController(Protocol):
    value: float
    unit: str  # what ``n_steps`` counts: 'samples' (adaptive) or optimizer 'steps'

    def update(self, observed_kl: float | Tensor | None = None, n_steps: int = 1) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


KL_CONTROLLERS: Registry[Callable[..., KLController]] = Registry("KL controller")


@KL_CONTROLLERS.register("fixed")
class FixedKL:
    """β constant (GRPO, DPO-style regularisation)."""

    unit = "steps"

    def __init__(self, beta: float = 0.04) -> None:
        self.value = float(beta)

    def update(self, observed_kl: float | Tensor | None = None, n_steps: int = 1) -> float:
        """Nothing to adapt; returns β."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])


@KL_CONTROLLERS.register("adaptive")
class AdaptiveKL:
    """Ziegler et al. 2019: steer β so the observed KL tracks a target.

    Units as in the paper: ``observed_kl`` is the mean per-sequence KL (summed over tokens),
    ``n_steps`` the number of samples in the batch and ``horizon`` counts samples too.
    """

    unit = "samples"

    def __init__(self, init: float = 0.2, target: float = 6.0, horizon: int = 10000) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = float(init)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, observed_kl: float | Tensor | None = None, n_steps: int = 1) -> float:
        """e = clip(KL/target − 1, ±0.2); β ← β·(1 + e·n_steps/horizon)."""
        if observed_kl is None:
            raise ValueError("adaptive KL controller needs the observed KL")
        e = min(max(float(observed_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + e * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])


def _progress(shape: str, p: float) -> float:
    """Fraction of the way from start to end after fraction p of the moving phase."""
    if shape == "linear":
        return p
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * p))
    if shape == "step":
        return 1.0
    raise ValueError(f"unknown schedule shape {shape!r}; known: cosine, linear, step")


@KL_CONTROLLERS.register("schedule")
class ScheduleKL:
    """GRPO-D / KDRL: β = start for the first warmup·total steps, then moves to end.

    shape ``linear`` / ``cosine`` interpolate over the remaining steps; ``step`` jumps to
    ``end`` right after the warm-up. ``update`` advances the step counter by n_steps.
    """

    unit = "steps"

    def __init__(
        self,
        start: float = 0.0,
        end: float = 0.04,
        total_steps: int = 1000,
        shape: str = "linear",
        warmup: float = 0.0,
    ) -> None:
        if total_steps <= 0 or not 0.0 <= warmup <= 1.0:
            raise ValueError("schedule needs total_steps > 0 and 0 <= warmup <= 1")
        _progress(shape, 0.0)  # validate the shape early
        self.start, self.end = float(start), float(end)
        self.total_steps, self.shape, self.warmup = int(total_steps), shape, float(warmup)
        self.step = 0

    @property
    def value(self) -> float:
        """β at the current step."""
        hold = self.warmup * self.total_steps
        if self.step < hold:
            return self.start
        span = self.total_steps - hold
        p = 1.0 if span <= 0 else min((self.step - hold) / span, 1.0)
        return self.start + (self.end - self.start) * _progress(self.shape, p)

    def update(self, observed_kl: float | Tensor | None = None, n_steps: int = 1) -> float:
        """Advance the schedule by n_steps; the observed KL is ignored."""
        self.step += int(n_steps)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


def kl_controller(kind: str | Mapping[str, Any] = "fixed", **kw: Any) -> KLController:
    """Build a controller by name (or from a mapping with a ``kind`` key plus its arguments)."""
    if isinstance(kind, Mapping):
        kw = {**kind, **kw}
        kind = kw.pop("kind")
    return KL_CONTROLLERS.get(kind)(**kw)


# ---------------------------------------------------------------------------------------------
# Placement: in the reward (PPO-RLHF) or in the loss (GRPO).
# ---------------------------------------------------------------------------------------------


def _upcast(x: Tensor) -> Tensor:
    """Half-precision logits lose too much in log_softmax; compute those in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def last_token_index(mask: Tensor) -> Tensor:
    """Column of the last valid token per row (−1 for an empty row)."""
    cols = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), cols, -1).amax(dim=-1)


@torch.no_grad()
def kl_penalty_in_reward(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kind: str = "k1",
    clamp: float | None = 20.0,
) -> Tensor:
    """Token rewards −β·k per valid token, plus the score at each row's last valid token."""
    logp, ref_logp = _upcast(logp), _upcast(ref_logp)
    rewards = -beta * kl_estimate(logp, ref_logp, kind, clamp) * mask.to(logp.dtype)
    return rewards + score_at_last_token(scores, mask, rewards.dtype)


@torch.no_grad()
def score_at_last_token(scores: Tensor, mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """[B, T] token rewards holding each row's score at its last valid token, 0 elsewhere."""
    dtype = dtype or torch.promote_types(scores.dtype, torch.float32)
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)  # empty rows get no score (nowhere to put it)
    out[rows, last[rows]] = scores.to(out.dtype)[rows]
    return out


def kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kind: str = "k3",
    agg: str = "token-mean",
    clamp: float | None = 20.0,
    *,
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """β·KL estimate aggregated like the policy loss (the GRPO in-loss placement)."""
    k = kl_estimate(logp, ref_logp, kind, clamp)
    loss = beta * aggregate(k, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    return loss, {"kl": masked_mean(k.detach(), mask)}


def exact_kl(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Full-vocabulary KL(π‖ref) per token ([..., V] logits → [...]); no sampling noise."""
    logp = torch.log_softmax(_upcast(policy_logits), dim=-1)
    ref = torch.log_softmax(_upcast(ref_logits), dim=-1)
    kl = (logp.exp() * (logp - ref)).sum(-1)
    return kl if mask is None else kl * mask.to(kl.dtype)
