"""Aggregation modes by hand, with local and global denominators, and empty masks."""

import pytest
import torch

from rlpost.objective import AGGREGATIONS, aggregate, global_counts

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]])  # row 2 empty
# masked sums per row: 3, 9, 0; token counts 2, 2, 0; total 12 over 4 tokens, 3 rows, T = 3


@pytest.mark.parametrize(
    ("mode", "local", "global_"),
    [
        ("token-mean", 12 / 4, 12 / 8),  # global num_tokens = 8
        ("seq-mean-token-mean", (1.5 + 4.5 + 0) / 3, (1.5 + 4.5) / 6),  # global num_seqs = 6
        ("seq-mean-token-sum", (3 + 9 + 0) / 3, 12 / 6),
        ("seq-mean-token-sum-norm", 12 / (3 * 3), 12 / (6 * 4)),  # global T_max = 4
    ],
)
def test_modes_hand_values(mode, local, global_):
    assert float(aggregate(LOSS, MASK, mode)) == pytest.approx(local)
    got = aggregate(LOSS, MASK, mode, num_tokens=8, num_seqs=6, max_len=4)
    assert float(got) == pytest.approx(global_)


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_empty_mask_gives_zero_and_no_nan(mode):
    x = LOSS.clone().requires_grad_(True)
    out = aggregate(x, torch.zeros_like(MASK), mode)
    out.backward()
    assert out.item() == 0.0 and not x.grad.isnan().any() and (x.grad == 0).all()
    # also with zero global counts (an all-padding micro-batch on an idle rank)
    assert aggregate(LOSS, torch.zeros_like(MASK), mode, 0, 0, 0).item() == 0.0


def test_tensor_counts_and_weighted_masks():
    got = aggregate(LOSS, MASK, "token-mean", num_tokens=torch.tensor(8.0))
    assert got.item() == pytest.approx(1.5)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert aggregate(LOSS, w, "token-mean").item() == pytest.approx(1.5)  # weighted mean of 1, 2


def test_global_counts_and_registry():
    assert global_counts(MASK, max_len=4) == {"num_tokens": 4.0, "num_seqs": 3, "max_len": 4}
    with pytest.raises(KeyError, match="seq-mean-token-sum-norm, token-mean"):
        aggregate(LOSS, MASK, "mean")
    assert len(AGGREGATIONS) >= 4
