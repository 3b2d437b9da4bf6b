"""Best-of-n gold vs KL: the estimator against brute force, and the curves' shape by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlpost.commands.bon import bon_curves, bon_gold, bon_kl, doubling, report


def brute_force(proxy: list[float], gold: list[float], n: int) -> float:
    """Mean over every n-subset of the gold of its proxy-best sample."""
    picks = [
        gold[max(sub, key=lambda i: (proxy[i], i))]
        for sub in itertools.combinations(range(len(proxy)), n)
    ]
    return sum(picks) / len(picks)


def test_best_of_n_by_hand_and_by_brute_force():
    proxy = torch.tensor([[0.1, 0.9, 0.5]])
    gold = torch.tensor([[1.0, 0.0, 3.0]])
    # ranked by proxy: gold 1, 3, 0. Best of 2: rank 2 with 1/3, rank 3 with 2/3 → 3/3 + 0 = 1
    assert bon_gold(proxy, gold, 1) == pytest.approx(4 / 3)
    assert bon_gold(proxy, gold, 2) == pytest.approx(1.0)
    assert bon_gold(proxy, gold, 3) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(3, 9, generator=g), torch.rand(3, 9, generator=g)
    for n in (1, 2, 4, 9):
        want = sum(brute_force(p[k].tolist(), q[k].tolist(), n) for k in range(3)) / 3
        assert bon_gold(p, q, n) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="best-of-10"):
        bon_gold(p, q, 10)


def test_kl_of_best_of_n_and_the_n_grid():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(256) == pytest.approx(math.log(256) - 255 / 256)
    assert doubling(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert doubling(12) == [1, 2, 4, 8, 12]


def test_curves_single_vs_ensembles():
    """Member 0 = the gold; member 1 = its negative. Alone, member 0 climbs and member 1 falls;
    WCO (the min of the two z-scores) prefers the middle samples."""
    gold = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    raw = torch.stack([gold, -gold])
    out = bon_curves(raw, gold, [1, 2, 4])
    m0, m1 = out["members"]
    assert m0 == pytest.approx([1.5, 14 / 6, 3.0]) and m1 == pytest.approx([1.5, 4 / 6, 0.0])
    assert out["curves"]["single"] == pytest.approx([1.5, 1.5, 1.5])
    assert out["curves"]["single_max"] == pytest.approx(m0)
    assert out["curves"]["gold"] == pytest.approx([1.5, 14 / 6, 3.0])
    assert out["kl"] == pytest.approx([bon_kl(n) for n in (1, 2, 4)])
    # z-scores ±[−1.34, −0.45, 0.45, 1.34]: WCO = −|z|, the middle two tie for best; a stable
    # ascending sort ranks the later one higher, so best of 4 picks sample 2 (gold 2)
    assert out["curves"]["wco"][2] == pytest.approx(2.0)
    text = report({**out, "model": "m", "prompts": 1, "samples": 4, "proxies": 2, "gold_spec": "g"})
    assert "| 4 | " in text and "| n | KL (nats) | single | mean | wco | uwo | gold |" in text


def test_ensembles_against_one_proxy_paired_by_prompt():
    """Two prompts shaped like the one above: at n = 4 WCO and UWO pick the later middle sample
    (gold 2) and the mean, whose members cancel, ties everywhere and picks the last (gold 3), while
    a lone member averages 1.5. Same on both prompts, so the intervals have no width."""
    gold = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    out = bon_curves(torch.stack([gold, -gold]), gold, [1, 2, 4])
    vs = out["versus_single"]
    assert vs["wco"][2] == pytest.approx([0.5, 0.5, 0.5])
    assert vs["uwo"][2] == pytest.approx([0.5, 0.5, 0.5])
    assert vs["mean"][2] == pytest.approx([1.5, 1.5, 1.5])
    assert vs["wco"][0] == pytest.approx([0.0, 0.0, 0.0])  # n = 1 is the base for every proxy
    text = report({**out, "model": "m", "prompts": 2, "samples": 4, "proxies": 2, "gold_spec": "g"})
    assert "| 4 | 1.500 [1.500, 1.500] | 0.500 [0.500, 0.500] | 0.500 [0.500, 0.500] |" in text
    # the single proxy is flat, so its peak is n = 1, where nothing differs
    assert "the single proxy's peak (n = 1): mean not reproduced" in text
    assert "the largest n (n = 4): mean reproduced, wco reproduced, uwo reproduced" in text
