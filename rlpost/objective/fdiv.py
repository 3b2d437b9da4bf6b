"""f-DPG (Go et al. 2023): minimise D_f(π‖p) for an unnormalised target P = Z·p.

∇D_f(π‖p) = E_{y~π}[f′(t_y)·∇log π(y)] with t_y = π(y)/p(y) = exp(log π(y) − log P(y) + log Z).
Everything is computed from log t, clamped, so no ratio overflows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlpost.groups import groups
from rlpost.objective.advantages import GroupIds, group_index
from rlpost.objective.aggregate import Count, safe_div
from rlpost.registry import Registry

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class FDivergence:
    """f and its derivative f′, both as functions of log t (t = π/p)."""

    f: Callable[[Tensor], Tensor]
    fprime: Callable[[Tensor], Tensor]


F_DIVERGENCES: Registry[FDivergence] = Registry("f-divergence")
register_divergence = F_DIVERGENCES.register

register_divergence(
    "reverse_kl",  # f(t) = t·log t → KL(π‖p): RL with a KL penalty
    FDivergence(f=lambda lt: lt.exp() * lt, fprime=lambda lt: 1.0 + lt),
)
register_divergence(
    "forward_kl",  # f(t) = −log t → KL(p‖π): DPG, mass-covering
    FDivergence(f=lambda lt: -lt, fprime=lambda lt: -torch.exp(-lt)),
)
register_divergence(
    "tv",  # f(t) = ½|t − 1| → total variation
    FDivergence(f=lambda lt: 0.5 * torch.expm1(lt).abs(), fprime=lambda lt: 0.5 * torch.sign(lt)),
)
register_divergence(
    "js",  # f(t) = ½[t·log t − (1+t)·log((1+t)/2)] → Jensen–Shannon
    FDivergence(
        f=lambda lt: 0.5 * (lt.exp() * lt - (1 + lt.exp()) * (F.softplus(lt) - LOG2)),
        fprime=lambda lt: 0.5 * (LOG2 + lt - F.softplus(lt)),
    ),
)


def log_mean_exp(x: Tensor) -> Tensor:
    """log((1/N)·Σ exp x) without overflow."""
    return torch.logsumexp(x, dim=-1) - math.log(x.shape[-1])


@torch.no_grad()
def group_log_z(policy_logp: Tensor, target_logp: Tensor, group_ids: GroupIds) -> Tensor:
    """[N] importance-sampling log Z(x) per prompt: each row gets its group's
    logmeanexp(log P − log π), the samples of one prompt x being the group.

    The target p(y|x) = P(y|x)/Z(x) is conditional, so Z is a function of the prompt: one
    batch-wide Z mis-weights every f-divergence except reverse KL (whose f′ only shifts by a
    per-prompt constant, which the per-prompt baseline removes).
    """
    x = target_logp.detach().to(policy_logp.dtype) - policy_logp.detach()
    idx, n = group_index(group_ids, x.device)
    peak = torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(0, idx, x, "amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, idx, (x - peak[idx]).exp())
    size = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, idx, torch.ones_like(x))
    return (total.log() + peak - size.log())[idx]


@torch.no_grad()
def f_divergence_weights(
    policy_logp: Tensor,
    target_logp: Tensor,
    divergence: str | FDivergence = "js",
    log_z: float | Tensor | None = None,
    clamp: float = 20.0,
) -> tuple[Tensor, Tensor]:
    """Per-sequence pseudo-rewards f′(t_y) and the log Z used (IS estimate when not given).

    ``target_logp`` is the unnormalised log P(y) (e.g. log π_ref(y) + r(y)/β); samples come
    from π, so Z ≈ mean P(y)/π(y). ``log_z`` is a float (one target) or a per-row tensor [N]
    (a conditional target: :func:`group_log_z`); None = one IS estimate over all rows.
    """
    div = F_DIVERGENCES.get(divergence) if isinstance(divergence, str) else divergence
    pl, tl = policy_logp.detach(), target_logp.detach().to(policy_logp.dtype)
    if log_z is None:
        log_z = log_mean_exp(tl - pl)
    log_z = torch.as_tensor(log_z, dtype=pl.dtype, device=pl.device)
    if log_z.dim() and log_z.shape != pl.shape:
        raise ValueError(f"log_z has shape {tuple(log_z.shape)}, rows have {tuple(pl.shape)}")
    log_t = (pl - tl + log_z).clamp(-clamp, clamp)
    return div.fprime(log_t), log_z


def _ema_log_z(old: float | None, new: float, momentum: float) -> float:
    """log(m·Z_old + (1 − m)·Z_new), the first estimate taken as is."""
    if old is None or momentum == 0:
        return new
    a = torch.tensor(math.log(momentum) + old, dtype=torch.float64)
    b = torch.tensor(math.log1p(-momentum) + new, dtype=torch.float64)
    return float(torch.logaddexp(a, b))


class LogZTracker:
    """Moving average of the partition function, kept in log space.

    Averaging happens on Z itself (via logaddexp): the importance-sampling estimate of Z is
    unbiased, its log is not, so averaging logs would bias Z low.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        self.momentum = momentum
        self.log_z: float | None = None

    def update(self, batch_log_z: float | Tensor) -> float:
        """Fold one batch estimate in; the first estimate is taken as is."""
        self.log_z = _ema_log_z(self.log_z, float(batch_log_z), self.momentum)
        return self.log_z

    @property
    def value(self) -> float | None:
        return self.log_z

    def state_dict(self) -> dict[str, Any]:
        return {"log_z": self.log_z, "momentum": self.momentum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.log_z = state["log_z"]
        self.momentum = float(state.get("momentum", self.momentum))


def prompt_key(prompt: Any) -> str:
    """A short stable key for a prompt (text or chat messages): keeps tracker state small."""
    return hashlib.blake2b(str(prompt).encode(), digest_size=8).hexdigest()


class PromptLogZTracker:
    """Per-prompt moving average of Z(x), in log space (averaged on Z, as :class:`LogZTracker`).

    Z(x) belongs to the target, not to the policy, so every visit of x estimates the same
    number: folding the estimates of later visits in lowers the variance, and a prompt sampled
    once (a group of one, whose own estimate makes t = 1) can fall back on earlier visits.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        self.momentum = momentum
        self.table: dict[str, float] = {}

    def update(self, keys: Sequence[str], row_log_z: Tensor) -> Tensor:
        """Fold each key's estimate (its rows share one, e.g. :func:`group_log_z`) into its
        average; returns the averaged log Z per row."""
        out = row_log_z.detach().clone()
        for key, rows in groups(keys).items():
            value = _ema_log_z(self.table.get(key), float(row_log_z[rows[0]]), self.momentum)
            self.table[key] = value
            out[rows] = value
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"table": dict(self.table), "momentum": self.momentum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.table = dict(state.get("table", {}))
        self.momentum = float(state.get("momentum", self.momentum))


def fdpg_loss(
    policy_seq_logp: Tensor,
    weights: Tensor,
    baseline: float | Tensor | None = None,
    *,
    num_seqs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ sg(f′ − b)·log π(y) / N; b = batch mean of f′ (a baseline changes no expectation).

    ``baseline`` may be a float or per-row [N] (f-DPG's per-prompt mean of f′). Pass the
    global ``num_seqs`` (and baselines computed on the whole batch) under data parallelism.
    """
    w = weights.detach().to(policy_seq_logp.dtype)
    b = w.mean() if baseline is None else torch.as_tensor(baseline, dtype=w.dtype, device=w.device)
    n = policy_seq_logp.shape[-1] if num_seqs is None else num_seqs
    loss = safe_div(((w - b) * policy_seq_logp).sum(), n)
    return loss, {"fdpg_baseline": b.detach().mean(), "fdpg_weight_mean": w.mean()}
