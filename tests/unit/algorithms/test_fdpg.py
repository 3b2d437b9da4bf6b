"""f-DPG: target, per-prompt importance-sampled log Z with its moving average, f′ weights,
per-prompt baselines, per-sequence loss; and the exact two-prompt gradient check."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.base import build_algorithm
from algorithms.fdpg import FDPG
from rlpost.batch import Batch
from rlpost.config import ConfigError
from rlpost.objective import (
    F_DIVERGENCES,
    f_divergence_weights,
    fdpg_loss,
    prompt_key,
    sequence_logp,
)

POLICY = [-2.0, -3.0, -1.0]  # sampling log π(y), sequence sums
REF = [-2.5, -2.0, -1.5]
SCORES = [1.0, 0.0, 0.5]
BETA = 0.5


def fdpg(make_cfg, *extra: str) -> FDPG:
    return build_algorithm(make_cfg("algorithm.name=fdpg", f"algorithm.kl.beta={BETA}", *extra))


def seq_batch(
    policy: list[float], ref: list[float], scores: list[float], group_ids: list | None = None
) -> Batch:
    """Each sequence's log-prob split over two response tokens after a prompt token; by default
    all rows are samples of one prompt 'p'."""
    ids = group_ids or [0] * len(policy)
    return Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0, 1.0]] * len(policy)),
            "old_logp": torch.tensor([[-7.0, p / 2, p / 2] for p in policy], dtype=torch.float64),
            "ref_logp": torch.tensor([[-7.0, r / 2, r / 2] for r in ref], dtype=torch.float64),
            "scores": torch.tensor(scores, dtype=torch.float64),
        },
        {"group_id": ids, "prompt": [f"p{g}" for g in ids]},
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
    assert batch["fdpg_baseline"].tolist() == pytest.approx([sum(js) / 3] * 3, abs=1e-6)
    # D_JS estimate: mean over samples of f(t)/t, f(t) = ½[t log t − (1+t) log((1+t)/2)]
    f = [0.5 * (math.exp(x) * x - (1 + math.exp(x)) * math.log((1 + math.exp(x)) / 2)) for x in lt]
    assert m["fdpg/divergence"] == pytest.approx(sum(fi / math.exp(x) for fi, x in zip(f, lt)) / 3)
    assert m["reward/mean"] == pytest.approx(0.5)
    assert m["kl/seq_mean"] == pytest.approx(sum(p - r for p, r in zip(POLICY, REF)) / 3)


def test_log_z_moving_average_on_z_per_prompt(make_cfg):
    """Both batches are samples of prompt 'p0': the second visit folds into its average."""
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
            "fdpg_baseline": torch.tensor([0.2] * 3),  # per row: its prompt's mean f′
        }
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
    (saved,) = fresh.log_z.table.values()  # one prompt seen
    assert fresh.step == 1 and saved == pytest.approx(log_mean_exp([1.5, 1.0, 0.5]))
    a, b = seq_batch([-1.0, -2.0, -3.0], REF, SCORES), seq_batch([-1.0, -2.0, -3.0], REF, SCORES)
    assert algo.prepare(a)["fdpg/log_z"] == pytest.approx(fresh.prepare(b)["fdpg/log_z"])
    torch.testing.assert_close(a["fdpg_weights"], b["fdpg_weights"])


# --- the exact two-prompt problem -------------------------------------------------------------
# Each prompt's group holds its arms in proportion to π(·|x) (π rational), so the group's
# importance-sampling log Z is exact (logmeanexp over rows of P/π = log Σ_y P(y|x)) and the
# per-row loss is an exact expectation: ∇loss = ½ Σ_x E_{π(·|x)}[(f′ − b_x)·∇log π]
#                                          = ½ Σ_x ∇D_f(π(·|x) ‖ p(·|x)).
# Prompt B is hard (low rewards): its Z is e^-4 times prompt A's.
PI = {"A": [0.5, 0.25, 0.25], "B": [0.25, 0.25, 0.5]}
ROWS = {"A": [0, 0, 1, 2], "B": [0, 1, 2, 2]}  # arm of each sample, by multiplicity π·4
REF_P = {"A": [0.2, 0.3, 0.5], "B": [0.5, 0.25, 0.25]}
REWARD = {"A": [1.0, 0.0, 0.5], "B": [-2.0, -3.0, -1.0]}


def two_prompt_problem() -> tuple[dict[str, torch.Tensor], torch.Tensor, Batch]:
    theta = {x: torch.tensor(PI[x], dtype=torch.float64).log().requires_grad_() for x in PI}
    logp_rows, ref_rows, scores, ids = [], [], [], []
    for g, x in enumerate(PI):
        lp = torch.log_softmax(theta[x], -1)
        for arm in ROWS[x]:
            logp_rows.append(torch.stack([torch.zeros((), dtype=torch.float64), lp[arm]]))
            ref_rows.append([0.0, math.log(REF_P[x][arm])])
            scores.append(REWARD[x][arm])
            ids.append(g)
    logp = torch.stack(logp_rows)
    batch = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0]] * len(ids), dtype=torch.float64),
            "old_logp": logp.detach().clone(),
            "ref_logp": torch.tensor(ref_rows, dtype=torch.float64),
            "scores": torch.tensor(scores, dtype=torch.float64),
        },
        {"group_id": ids, "prompt": [x for x in PI for _ in ROWS[x]]},
    )
    return theta, logp, batch


def exact_divergence_gradient(theta: dict, divergence: str) -> list[torch.Tensor]:
    """Autograd of ½ Σ_x D_f(π(·|x) ‖ p(·|x)), p(y|x) ∝ ref(y|x)·e^{r(x,y)/β} normalised exactly."""
    total = torch.zeros((), dtype=torch.float64)
    for x in PI:
        log_pi = torch.log_softmax(theta[x], -1)
        log_p_un = (
            torch.tensor(REF_P[x], dtype=torch.float64).log()
            + torch.tensor(REWARD[x], dtype=torch.float64) / BETA
        )
        log_p = log_p_un - torch.logsumexp(log_p_un, -1)
        total = total + 0.5 * (log_p.exp() * F_DIVERGENCES.get(divergence).f(log_pi - log_p)).sum()
    return list(torch.autograd.grad(total, [theta[x] for x in PI]))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "tv", "js"])
def test_per_prompt_z_gives_the_exact_divergence_gradient(make_cfg, divergence):
    algo = fdpg(make_cfg, f"algorithm.divergence={divergence}", "algorithm.logz_momentum=0")
    theta, logp, batch = two_prompt_problem()
    m = algo.prepare(batch)
    # log Z(x) = log Σ_y ref(y|x)·e^{r(x,y)/β} exactly, one value per prompt
    for g, x in enumerate(PI):
        z = sum(p * math.exp(r / BETA) for p, r in zip(REF_P[x], REWARD[x]))
        rows = [i for i, gid in enumerate(batch["group_id"]) if gid == g]
        assert algo.log_z.table[prompt_key(x)] == pytest.approx(math.log(z), abs=1e-12)
        assert m["fdpg/log_z_spread"] > 3.0  # the hard prompt's Z is far below the easy one's
        assert len(set(batch["fdpg_baseline"][rows].tolist())) == 1  # one baseline per prompt
    loss, _ = algo.loss(logp, batch, {"num_tokens": 8, "num_seqs": 8, "max_len": 1})
    got = torch.autograd.grad(loss, [theta[x] for x in PI])
    want = exact_divergence_gradient(theta, divergence)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)  # weights travel as float32


@pytest.mark.parametrize(
    "divergence, wrong", [("reverse_kl", False), ("forward_kl", True), ("tv", True), ("js", True)]
)
def test_one_batch_wide_z_misweights_all_but_reverse_kl(divergence, wrong):
    """Negative control: the pre-fix estimator (one log Z and one baseline for the batch)."""
    theta, logp, batch = two_prompt_problem()
    mask = batch["response_mask"]
    policy = sequence_logp(batch["old_logp"], mask)
    target = sequence_logp(batch["ref_logp"], mask) + batch["scores"] / BETA
    weights, _ = f_divergence_weights(policy, target, divergence)  # log Z over all 8 rows
    loss, _ = fdpg_loss(sequence_logp(logp, mask), weights, num_seqs=8)
    got = torch.autograd.grad(loss, [theta[x] for x in PI])
    want = exact_divergence_gradient(theta, divergence)
    gap = max((g - w).abs().max().item() for g, w in zip(got, want))
    assert (gap > 1e-3) if wrong else (gap < 1e-12)


def test_group_of_one_uses_earlier_visits_and_the_batch_baseline(make_cfg):
    algo = fdpg(make_cfg, "algorithm.logz_momentum=0.5")
    algo.prepare(seq_batch(POLICY, REF, SCORES, [0, 0, 0]))  # prompt p0: log Z = z1
    z1 = log_mean_exp([1.5, 1.0, 0.5])
    # next step: p0 sampled once (alone), p1 twice
    batch = seq_batch([-2.0, -1.0, -1.5], REF, SCORES, [0, 1, 1])
    m = algo.prepare(batch)
    z_alone = (REF[0] + SCORES[0] / BETA) - (-2.0)  # its own one-sample estimate: 0.5
    smoothed = math.log(0.5 * math.exp(z1) + 0.5 * math.exp(z_alone))
    lt0 = -2.0 - (REF[0] + SCORES[0] / BETA) + smoothed  # ≠ 0: the earlier visit gives a signal
    assert batch["fdpg_weights"][0].item() == pytest.approx(
        0.5 * (math.log(2) + lt0 - math.log1p(math.exp(lt0))), abs=1e-6
    )
    w = batch["fdpg_weights"].tolist()
    assert batch["fdpg_baseline"].tolist() == pytest.approx(
        [sum(w) / 3, (w[1] + w[2]) / 2, (w[1] + w[2]) / 2], abs=1e-6
    )
    assert m["fdpg/singleton_groups"] == 1.0
