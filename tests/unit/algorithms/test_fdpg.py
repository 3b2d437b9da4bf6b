"""f-DPG: target, importance-sampled log Z with its moving average, f′ weights, per-sequence loss."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.base import build_algorithm
from algorithms.fdpg import FDPG
from rlpost.batch import Batch
from rlpost.config import ConfigError

POLICY = [-2.0, -3.0, -1.0]  # sampling log π(y), sequence sums
REF = [-2.5, -2.0, -1.5]
SCORES = [1.0, 0.0, 0.5]
BETA = 0.5


def fdpg(make_cfg, *extra: str) -> FDPG:
    return build_algorithm(make_cfg("algorithm.name=fdpg", f"algorithm.kl.beta={BETA}", *extra))


def seq_batch(policy: list[float], ref: list[float], scores: list[float]) -> Batch:
    """Each sequence's log-prob split over two response tokens after a prompt token."""
    return Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0, 1.0]] * len(policy)),
            "old_logp": torch.tensor([[-7.0, p / 2, p / 2] for p in policy]),
            "ref_logp": torch.tensor([[-7.0, r / 2, r / 2] for r in ref]),
            "scores": torch.tensor(scores),
        }
    )


def log_mean_exp(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs) / len(xs))


def hand_log_t(policy, ref, scores, log_z) -> list[float]:
    return [p - (r + s / BETA) + log_z for p, r, s in zip(policy, ref, scores)]


def test_needs_reference(make_cfg):
    n = fdpg(make_cfg).needs()
    assert n.reference is True and n.samples_per_prompt == 8 and n.row_multiple == 1


def test_bad_config_named(make_cfg):
    with pytest.raises(ConfigError, match="algorithm.kl.beta"):
        build_algorithm(make_cfg("algorithm.name=fdpg", "algorithm.kl.beta=0"))
    with pytest.raises(ConfigError, match="algorithm.divergence"):
        fdpg(make_cfg, "algorithm.divergence=hellinger")


def test_js_weights_and_log_z_by_hand(make_cfg):
    algo = fdpg(make_cfg)  # default divergence: js
    batch = seq_batch(POLICY, REF, SCORES)
    m = algo.prepare(batch)
    # target log P = ref + r/β = [-0.5, -2.0, -0.5]; log P − log π = [1.5, 1.0, 0.5]
    log_z = log_mean_exp([1.5, 1.0, 0.5])
    assert m["fdpg/log_z_batch"] == pytest.approx(log_z, abs=1e-6)
    assert m["fdpg/log_z"] == pytest.approx(log_z, abs=1e-6)  # first estimate taken as is
    lt = hand_log_t(POLICY, REF, SCORES, log_z)
    js = [0.5 * math.log(2 * math.exp(x) / (1 + math.exp(x))) for x in lt]
    assert batch["fdpg_weights"].tolist() == pytest.approx(js, abs=1e-6)
    assert batch.meta["fdpg_baseline"] == pytest.approx(sum(js) / 3, abs=1e-6)
    # D_JS estimate: mean over samples of f(t)/t, f(t) = ½[t log t − (1+t) log((1+t)/2)]
    f = [0.5 * (math.exp(x) * x - (1 + math.exp(x)) * math.log((1 + math.exp(x)) / 2)) for x in lt]
    assert m["fdpg/divergence"] == pytest.approx(sum(fi / math.exp(x) for fi, x in zip(f, lt)) / 3)
    assert m["reward/mean"] == pytest.approx(0.5)
    assert m["kl/seq_mean"] == pytest.approx(sum(p - r for p, r in zip(POLICY, REF)) / 3)


def test_log_z_moving_average_on_z(make_cfg):
    algo = fdpg(make_cfg, "algorithm.logz_momentum=0.9")
    algo.prepare(seq_batch(POLICY, REF, SCORES))
    second = seq_batch([-1.0, -1.0, -4.0], REF, [0.0, 0.0, 1.0])
    m = algo.prepare(second)
    z1 = log_mean_exp([1.5, 1.0, 0.5])
    z2 = log_mean_exp([-1.5, -1.0, 4.5])
    assert m["fdpg/log_z_batch"] == pytest.approx(z2, abs=1e-6)
    smoothed = math.log(0.9 * math.exp(z1) + 0.1 * math.exp(z2))
    assert m["fdpg/log_z"] == pytest.approx(smoothed, abs=1e-6)
    lt = hand_log_t([-1.0, -1.0, -4.0], REF, [0.0, 0.0, 1.0], smoothed)  # weights use the average
    js = [0.5 * (math.log(2) + x - math.log1p(math.exp(x))) for x in lt]
    assert second["fdpg_weights"].tolist() == pytest.approx(js, abs=1e-6)


@pytest.mark.parametrize(
    "divergence, fprime, f_over_t",
    [
        ("reverse_kl", lambda x: 1 + x, lambda x: x),  # f = t log t: f/t = log t
        ("forward_kl", lambda x: -math.exp(-x), lambda x: -x * math.exp(-x)),  # f = −log t
        (
            "tv",
            lambda x: 0.5 * math.copysign(1.0, x),
            lambda x: 0.5 * abs(math.expm1(x)) / math.exp(x),
        ),
    ],
)
def test_other_divergences(make_cfg, divergence, fprime, f_over_t):
    algo = fdpg(make_cfg, f"algorithm.divergence={divergence}")
    batch = seq_batch(POLICY, REF, SCORES)
    m = algo.prepare(batch)
    lt = hand_log_t(POLICY, REF, SCORES, log_mean_exp([1.5, 1.0, 0.5]))
    assert batch["fdpg_weights"].tolist() == pytest.approx([fprime(x) for x in lt], abs=1e-6)
    assert m["fdpg/divergence"] == pytest.approx(sum(f_over_t(x) for x in lt) / 3, abs=1e-6)


def learner_batch() -> tuple[torch.Tensor, Batch, list[float]]:
    weights = [0.3, -0.1, 0.4]
    logp = torch.tensor([[-7.0, -1.0, -1.0], [-7.0, -0.5, -2.5], [-7.0, -0.25, -0.75]])
    batch = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0, 1.0]] * 3),
            "fdpg_weights": torch.tensor(weights),
        },
        meta={"fdpg_baseline": 0.2},  # global mean of f′ over the whole batch
    )
    return logp.requires_grad_(True), batch, weights


def test_loss_by_hand_and_global_count(make_cfg):
    algo = fdpg(make_cfg)
    logp, batch, w = learner_batch()
    counts = {"num_tokens": 6, "num_seqs": 3, "max_len": 2}
    loss, m = algo.loss(logp, batch, counts)
    seq = [-2.0, -3.0, -1.0]
    expect = sum((wi - 0.2) * s for wi, s in zip(w, seq)) / 3
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    assert m["loss/policy"] == pytest.approx(expect, abs=1e-6)
    loss.backward()
    # ∂loss/∂logp_t = (f′ − b)/N on each response token, nothing on the prompt
    torch.testing.assert_close(logp.grad[:, 1], torch.tensor([0.1, -0.3, 0.2]) / 3)
    assert logp.grad[:, 0].abs().sum() == 0
    # micro-batches [0:2] and [2:3] with the global N sum to the whole-batch loss
    l1, _ = algo.loss(logp[:2], batch.slice(0, 2), counts)
    l2, _ = algo.loss(logp[2:], batch.slice(2, 3), counts)
    assert (l1 + l2).item() == pytest.approx(expect, abs=1e-6)


def test_padded_rows_add_nothing(make_cfg):
    algo = fdpg(make_cfg)
    logp, batch, _ = learner_batch()
    counts = {"num_tokens": 6, "num_seqs": 3, "max_len": 2}
    base, _ = algo.loss(logp, batch, counts)
    pad = batch.select([0])  # its weight is copied, its response mask is not
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    loss, _ = algo.loss(torch.cat([logp, logp[:1]]), Batch.concat([batch, pad]), counts)
    assert loss.item() == pytest.approx(base.item(), abs=1e-7)


def test_state_dict_round_trip(make_cfg):
    algo = fdpg(make_cfg)
    algo.prepare(seq_batch(POLICY, REF, SCORES))
    algo.update({})
    fresh = fdpg(make_cfg)
    fresh.load_state_dict(algo.state_dict())
    assert fresh.step == 1 and fresh.log_z.value == pytest.approx(log_mean_exp([1.5, 1.0, 0.5]))
    a, b = seq_batch([-1.0, -2.0, -3.0], REF, SCORES), seq_batch([-1.0, -2.0, -3.0], REF, SCORES)
    assert algo.prepare(a)["fdpg/log_z"] == pytest.approx(fresh.prepare(b)["fdpg/log_z"])
    torch.testing.assert_close(a["fdpg_weights"], b["fdpg_weights"])
