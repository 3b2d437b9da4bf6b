"""DPO: pairing, the pair layout, the loss on hand-made pairs, offline sampling state."""

from __future__ import annotations

import json
import math

import pytest
import torch

from algorithms.base import build_algorithm
from algorithms.dpo import best_worst_pairs, real_pairs
from rlpost.batch import Batch, build_sequences
from rlpost.config import ConfigError
from rlpost.groups import group_ids_for


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


class FakeExp:
    """generate() returns fixed token responses per prompt; score() fixed scores."""

    def __init__(self, responses: list[list[list[int]]], scores: list[float], tokenizer=None):
        self.responses, self.scores = responses, scores
        self.tokenizer = tokenizer
        self.step, self.policy_version = 3, 0
        self.generated = 0

    def generate(self, prompts, n):
        self.generated += 1
        p_ids, r_ids = [], []
        for p, outs in zip(prompts, self.responses):
            assert len(outs) == n
            for r in outs:
                p_ids.append(p["prompt_ids"])
                r_ids.append(r)
        batch = build_sequences(p_ids, r_ids, [[-1.0] * len(r) for r in r_ids])
        batch["group_id"] = group_ids_for(self.step, len(prompts), n)
        batch["completion"] = [str(r) for r in r_ids]
        return batch

    def score(self, batch):
        batch.tensors["scores"] = torch.tensor(self.scores)
        return {"reward/raw_mean": sum(self.scores) / len(self.scores)}


# -------------------------------------------------------------------------------- pairing
def test_best_vs_worst_skips_ties():
    scores = [1.0, 3.0, 2.0, 5.0, 5.0, 0.0, 1.0, 7.0]
    groups = ["a", "a", "a", "b", "b", "c", "c", "d"]
    # a: best row 1, worst row 0; b ties → skipped; c: 6 vs 5; d has one row → skipped
    assert best_worst_pairs(scores, groups) == [(1, 0), (6, 5)]


def test_tied_best_takes_first_row():
    assert best_worst_pairs([2.0, 2.0, 1.0, 1.0], [0, 0, 0, 0]) == [(0, 2)]


def test_online_collect_lays_pairs_out_adjacent(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=dpo", "rollout.n=3"))
    prompts = [{"prompt_ids": [5, 6]}, {"prompt_ids": [7]}]
    resp = [[[10], [11, 12], [13]], [[20], [21], [22]]]
    exp = FakeExp(resp, scores=[0.5, 2.0, 0.1, 1.0, 1.0, 1.0])  # second prompt ties
    batch = algo.collect(exp, prompts)
    assert len(batch) == 2
    assert batch["completion"] == ["[11, 12]", "[13]"]  # chosen (2.0) then rejected (0.1)
    assert batch["scores"].tolist() == pytest.approx([2.0, 0.1])
    metrics = algo.prepare(batch)
    assert metrics["dpo/pairs"] == 1.0 and metrics["dpo/tied_groups"] == 1.0
    assert metrics["reward/pair_gap"] == pytest.approx(1.9)
    assert metrics["reward/mean"] == pytest.approx(5.6 / 6)
    assert metrics["reward/raw_mean"] == pytest.approx(5.6 / 6)  # the reward group's own metrics


def test_online_all_ties_keeps_one_masked_pair(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=dpo", "rollout.n=2"))
    exp = FakeExp([[[1], [2]]], scores=[0.0, 0.0])
    batch = algo.collect(exp, [{"prompt_ids": [3]}])
    assert len(batch) == 2 and batch["response_mask"].sum() == 0
    assert algo.prepare(batch)["dpo/pairs"] == 0.0


def test_online_needs_two_samples(make_cfg):
    with pytest.raises(ConfigError, match="rollout.n"):
        build_algorithm(make_cfg("algorithm.name=dpo", "rollout.n=1"))


def test_needs(make_cfg):
    n = build_algorithm(make_cfg("algorithm.name=dpo")).needs()
    assert (n.row_multiple, n.reference, n.samples_per_prompt) == (2, True, 8)
    assert n.reward and n.rollout
    off = build_algorithm(make_cfg("algorithm.name=dpo", "algorithm.preference_data=x.jsonl"))
    n = off.needs()
    assert (n.row_multiple, n.reference, n.samples_per_prompt) == (2, True, 2)
    assert not n.reward and not n.rollout  # no engine, no reward group
    ev = "trainer.eval_every=5"
    off = build_algorithm(make_cfg("algorithm.name=dpo", "algorithm.preference_data=x", ev))
    assert off.needs().rollout  # in-loop evaluation generates


# -------------------------------------------------------------------------------- loss
PAIRS = {  # per pair: policy chosen, policy rejected, ref chosen, ref rejected (sequence sums)
    "pc": [-2.0, -4.0],
    "pr": [-3.0, -1.0],
    "rc": [-2.5, -3.0],
    "rr": [-2.5, -2.0],
}


def pair_batch() -> tuple[torch.Tensor, Batch]:
    """Two pairs; each sequence's log-prob split over two response tokens (prompt token 0)."""
    seq = [PAIRS["pc"][0], PAIRS["pr"][0], PAIRS["pc"][1], PAIRS["pr"][1]]
    ref = [PAIRS["rc"][0], PAIRS["rr"][0], PAIRS["rc"][1], PAIRS["rr"][1]]
    logp = torch.tensor([[-9.0, s / 2, s / 2] for s in seq], requires_grad=True)
    batch = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1.0, 1.0]] * 4),
            "ref_logp": torch.tensor([[-9.0, r / 2, r / 2] for r in ref]),
        }
    )
    return logp, batch


def margins() -> list[float]:
    # h = (pc − rc) − (pr − rr): pair 0: 0.5 − (−0.5) = 1.0; pair 1: −1.0 − 1.0 = −2.0
    return [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(*PAIRS.values())]


def test_sigmoid_loss_by_hand(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=dpo", "algorithm.beta=0.1"))
    logp, batch = pair_batch()
    loss, m = algo.loss(logp, batch, {"num_tokens": 8, "num_seqs": 4, "max_len": 2})
    h = margins()
    assert h == pytest.approx([1.0, -2.0])
    expect = -(log_sigmoid(0.1 * h[0]) + log_sigmoid(0.1 * h[1])) / 2
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    assert m["loss/dpo"] == pytest.approx(expect, abs=1e-6)
    assert m["dpo/reward_acc"] == pytest.approx(0.5)
    assert m["dpo/margin"] == pytest.approx(0.1 * (1.0 - 2.0) / 2)
    loss.backward()
    # ∂/∂pc of −log σ(βh) = −β·σ(−βh), spread over pair 0's chosen tokens, /2 pairs
    g = -0.1 * (1 / (1 + math.exp(0.1 * h[0]))) / 2
    assert logp.grad[0, 1].item() == pytest.approx(g, abs=1e-6)
    assert logp.grad[:, 0].abs().sum() == 0  # prompt tokens get nothing


def test_label_smoothing_and_ipo(make_cfg):
    logp, batch = pair_batch()
    counts = {"num_tokens": 8, "num_seqs": 4, "max_len": 2}
    h = margins()
    cdpo = build_algorithm(make_cfg("algorithm.name=dpo", "algorithm.label_smoothing=0.2"))
    loss, _ = cdpo.loss(logp, batch, counts)
    expect = sum(-0.8 * log_sigmoid(0.1 * x) - 0.2 * log_sigmoid(-0.1 * x) for x in h) / 2
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    ipo = build_algorithm(make_cfg("algorithm.name=dpo", "algorithm.loss_kind=ipo"))
    loss, _ = ipo.loss(logp, batch, counts)
    assert loss.item() == pytest.approx(sum((x - 1 / 0.2) ** 2 for x in h) / 2, abs=1e-5)


def test_padded_pairs_add_nothing_and_counts_are_global(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=dpo"))
    logp, batch = pair_batch()
    counts = {"num_tokens": 8, "num_seqs": 4, "max_len": 2}
    full, m_full = algo.loss(logp, batch, counts)
    # Micro-batch 1: pair 0; micro-batch 2: pair 1 + a padding pair (copy of pair 0, mask 0).
    pad = batch.select([0, 1])
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    second = Batch.concat([batch.slice(2, 4), pad])
    assert real_pairs(second["response_mask"]).tolist() == [True, False]
    l1, _ = algo.loss(logp[:2], batch.slice(0, 2), counts)
    l2, m2 = algo.loss(torch.cat([logp[2:], logp[:2]]), second, counts)
    assert (l1 + l2).item() == pytest.approx(full.item(), abs=1e-6)
    assert m2["dpo/reward_acc"] == 0.0 and m2["dpo/margin"] == pytest.approx(0.1 * -2.0)
    only_pad, m_pad = algo.loss(logp[:2], pad, counts)
    assert only_pad.item() == 0.0 and all(math.isfinite(v) for v in m_pad.values())


# -------------------------------------------------------------------------------- offline
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from rlpost.models import tiny

    return AutoTokenizer.from_pretrained(tiny.ensure("nano"))


@pytest.fixture
def pref_file(tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_offline_collect_pairs_and_resume(make_cfg, tok, pref_file):
    cfg = make_cfg("algorithm.name=dpo", f"algorithm.preference_data={pref_file}", "rollout.n=1")
    algo = build_algorithm(cfg)  # rollout.n is irrelevant offline
    exp = FakeExp([], [], tokenizer=tok)
    batch = algo.collect(exp, [{"prompt_ids": [1]}] * 2)  # prompts only set the count
    assert exp.generated == 0 and len(batch) == 4
    done = batch["completion"]
    assert [c.split()[0] for c in done] == ["good", "bad", "good", "bad"]
    assert done[0].split()[1] == done[1].split()[1]  # a pair shares its prompt
    assert (
        batch["prompt"][0]
        == batch["prompt"][1]
        == f"<|user|>\nQ{done[0].split()[1]}?\n<|assistant|>\n"
    )
    assert batch["scores"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert batch["group_id"][0] == batch["group_id"][1] != batch["group_id"][2]
    # chosen row = prompt ids + chosen ids + eos; mask only on the response
    row, eos = batch["input_ids"][0], tok.eos_token_id
    want = tok(batch["prompt"][0], add_special_tokens=False)["input_ids"]
    want += tok(done[0], add_special_tokens=False)["input_ids"] + [eos]
    assert row[: len(want)].tolist() == want
    assert batch["response_mask"][0].sum().item() == len(want) - batch["prompt_len"][0]
    metrics = algo.prepare(batch)
    assert metrics["dpo/pairs"] == 2.0

    state = algo.state_dict()
    nxt = algo.collect(exp, [{}] * 3)["completion"]
    fresh = build_algorithm(cfg)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert fresh.collect(exp, [{}] * 3)["completion"] == nxt
    # 5 pairs: the first 5 draws of an epoch are a permutation of the file
    firsts = {c.split()[1] for c in (done + nxt)[0::2]}
    assert firsts == {"0", "1", "2", "3", "4"}
