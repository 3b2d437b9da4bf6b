"""Loss aggregation over tokens and sequences with global denominators.

Every mode is Σ (weights · ℓ) / denominator, where the denominator is a count over the whole
global mini-batch (all data-parallel ranks × all micro-batches). Each micro-batch's loss is then
its exact share of the whole-batch loss, so summing the micro-batch gradients over ranks and
accumulation steps reproduces the whole-batch gradient whatever the split.

The mask may hold non-negative weights instead of 0/1 (the token modes then take weighted means).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlpost.registry import Registry

Count = float | int | Tensor | None


def safe_div(num: Tensor, den: float | int | Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (an empty mask contributes nothing instead of NaN)."""
    den = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over valid positions (0 when there are none); used for metrics."""
    m = mask.to(x.dtype)
    return safe_div((x * m).sum(), m.sum())


def _rows(x: Tensor) -> int:
    """Number of sequences: every leading dimension except the token axis."""
    return x.shape[:-1].numel()


AggFn = Callable[[Tensor, Tensor, Count, Count, Count], Tensor]
AGGREGATIONS: Registry[AggFn] = Registry("aggregation mode")


@AGGREGATIONS.register("token-mean")
def _token_mean(
    lm: Tensor, m: Tensor, num_tokens: Count, num_seqs: Count, max_len: Count
) -> Tensor:
    """Σ m·ℓ / Σ m: every token weighs the same (GRPO default, DAPO)."""
    return safe_div(lm.sum(), m.sum() if num_tokens is None else num_tokens)


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(
    lm: Tensor, m: Tensor, num_tokens: Count, num_seqs: Count, max_len: Count
) -> Tensor:
    """mean_i (Σ_t m·ℓ / Σ_t m): every sequence weighs the same (original GRPO)."""
    per_seq = safe_div(lm.sum(-1), m.sum(-1))
    return safe_div(per_seq.sum(), _rows(lm) if num_seqs is None else num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(
    lm: Tensor, m: Tensor, num_tokens: Count, num_seqs: Count, max_len: Count
) -> Tensor:
    """mean_i Σ_t m·ℓ: the sequence-level REINFORCE estimate."""
    return safe_div(lm.sum(), _rows(lm) if num_seqs is None else num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(
    lm: Tensor, m: Tensor, num_tokens: Count, num_seqs: Count, max_len: Count
) -> Tensor:
    """Σ m·ℓ / (N·T_max) with a constant T_max (Dr.GRPO): no length bias."""
    n = _rows(lm) if num_seqs is None else num_seqs
    t = lm.shape[-1] if max_len is None else max_len
    return safe_div(lm.sum(), n * t)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    num_tokens: Count = None,
    num_seqs: Count = None,
    max_len: Count = None,
) -> Tensor:
    """Reduce a per-token loss [..., T] to a scalar; given counts are the global denominators.

    num_tokens = Σ mask over the global mini-batch, num_seqs = its number of rows,
    max_len = the constant T_max. Missing counts default to this call's local ones.
    """
    m = mask.to(per_token.dtype)
    return AGGREGATIONS.get(mode)(per_token * m, m, num_tokens, num_seqs, max_len)


def global_counts(mask: Tensor, max_len: int | None = None) -> dict[str, float | int]:
    """The counts of one (whole) mini-batch, to be summed over ranks and passed to losses."""
    return {
        "num_tokens": float(mask.to(torch.float64).sum()),
        "num_seqs": _rows(mask),
        "max_len": mask.shape[-1] if max_len is None else max_len,
    }
