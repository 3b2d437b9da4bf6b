"""Data-parallel invariance: summed micro-batch gradients (global counts) = whole-batch gradient.

The learner calls loss.backward() on every micro-batch of every rank and the gradients are summed.
Here one batch of 8 rows is split over 2 simulated ranks × 2 micro-batches; each micro-batch is
cut to its own padded width (as a real collator does) and T_max is a constant larger than any.
"""

import pytest
import torch

from rlpost.objective import clipped_pg_loss, global_counts, kl_loss

D = torch.float64
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
B, T, H, V, T_MAX = 8, 6, 4, 5, 7


def make_batch():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, T, H, generator=g, dtype=D)
    tokens = torch.randint(0, V, (B, T), generator=g)
    weight0 = torch.randn(H, V, generator=g, dtype=D)
    old = torch.log_softmax(feats @ weight0, -1).gather(-1, tokens[..., None])[..., 0]
    old = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)  # stale: some ratios get clipped
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)
    lengths = [(1, 5), (0, 2), (2, 6), (0, 0), (3, 4), (1, 6), (0, 6), (2, 3)]  # row 3 empty
    mask = torch.zeros(B, T, dtype=D)
    for i, (s, e) in enumerate(lengths):
        mask[i, s:e] = 1  # responses after prompts of different lengths, right padding
    return feats, tokens, weight0, old, ref, adv, mask


def policy_loss(weight, feats, tokens, old, ref, adv, mask, mode, **counts):
    """Tiny linear policy: logits = features @ W; loss = clipped PG + β·k3 KL."""
    logp = torch.log_softmax(feats @ weight, -1).gather(-1, tokens[..., None])[..., 0]
    pg, metrics = clipped_pg_loss(logp, old, adv, mask, agg=mode, **counts)
    kl, _ = kl_loss(logp, ref, mask, 0.04, agg=mode, **counts)
    return pg + kl, metrics


def whole_and_split(mode: str, use_global: bool = True):
    feats, tokens, weight0, old, ref, adv, mask = make_batch()
    w = weight0.clone().requires_grad_(True)
    whole, m = policy_loss(w, feats, tokens, old, ref, adv, mask, mode, max_len=T_MAX)
    (g_whole,) = torch.autograd.grad(whole, w)
    assert m["clip_frac"].item() > 0  # the clipped branch is exercised

    counts = global_counts(mask, max_len=T_MAX)
    w2 = weight0.clone().requires_grad_(True)
    total = torch.zeros((), dtype=D)
    for rank in range(2):
        for micro in range(2):
            rows = slice(4 * rank + 2 * micro, 4 * rank + 2 * micro + 2)
            width = max(int(mask[rows].nonzero()[:, 1].max()) + 1, 1) if mask[rows].any() else 1
            cut = (slice(None), slice(0, width))
            parts = [x[rows][cut] for x in (feats, tokens, old, ref)]
            kw = counts if use_global else {"max_len": T_MAX}
            loss, _ = policy_loss(
                w2, parts[0], parts[1], parts[2], parts[3], adv[rows], mask[rows][cut], mode, **kw
            )
            loss.backward()  # gradients accumulate (sum) across micro-batches and ranks
            total = total + loss.detach()
    return whole.detach(), total, g_whole, w2.grad


@pytest.mark.parametrize("mode", MODES)
def test_split_gradient_equals_whole_batch(mode):
    whole, total, g_whole, g_split = whole_and_split(mode)
    err = (g_whole - g_split).abs().max().item()
    print(f"\n{mode}: |loss diff| = {abs(whole - total).item():.1e}, max |grad diff| = {err:.1e}")
    assert abs(whole - total).item() < 1e-10
    assert err < 1e-6


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_local_counts_break_invariance(mode):
    """Negative control: with local denominators the summed gradient is wrong, so the test
    above would catch a loss that ignored the global counts."""
    _, _, g_whole, g_split = whole_and_split(mode, use_global=False)
    assert (g_whole - g_split).abs().max().item() > 1e-3
