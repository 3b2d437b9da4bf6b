"""MCTS-DPO: PUCT selection, backup and pair extraction on hand-built trees with fixed numbers;
the search loop and the algorithm's collect on a fake experience; DPO assembly on hand-made
pairs; padded pairs; state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.mcts_dpo import MCTSDPO
from algorithms.mcts_search import (
    Node,
    add_children,
    backup,
    extract_pairs,
    node_value,
    priors,
    puct,
    run_search,
    select_leaf,
    tree_stats,
)
from rlpost.batch import Batch
from rlpost.config import ConfigError


def child(parent: Node, q: float, visits: int = 1, prior: float = 0.5, tok: int = 1) -> Node:
    n = Node(parent.ids + [tok], [tok], prior=prior, depth=parent.depth + 1, parent=parent)
    n.visits, n.value_sum = visits, q * visits
    parent.children.append(n)
    return n


# -- search machinery -------------------------------------------------------------------------
def test_puct_value():
    root = Node([0], visits=4)
    c = child(root, q=0.5, visits=1, prior=0.4)
    assert puct(c, 4, 1.0) == pytest.approx(0.5 + 0.4 * 2 / 2)
    assert puct(c, 4, 0.0) == pytest.approx(0.5)


def test_select_trades_q_against_exploration():
    root = Node([0], visits=4)
    a = child(root, q=0.6, visits=3, prior=0.2, tok=1)  # 0.6 + 0.2·2/4 = 0.7
    b = child(root, q=0.5, visits=1, prior=0.8, tok=2)  # 0.5 + 0.8·2/2 = 1.3
    assert select_leaf(root, 1.0) is b
    assert select_leaf(root, 0.0) is a
    deep = child(a, q=0.1, tok=3)
    assert select_leaf(root, 0.0) is deep  # descends to a node without children


def test_unvisited_q_is_own_value():
    n = Node([0], value=0.7)
    assert n.q == 0.7
    assert Node([0]).q == 0.0


def test_backup_updates_the_whole_path():
    root = Node([0])
    a = child(root, q=0.0, visits=0)
    leaf = child(a, q=0.0, visits=0)
    backup(leaf, 0.8)
    backup(a, 0.2)
    assert (root.visits, root.value_sum) == (2, pytest.approx(1.0))
    assert (a.visits, a.q) == (2, pytest.approx(0.5))
    assert (leaf.visits, leaf.q) == (1, pytest.approx(0.8))


def test_priors_are_softmax_of_length_normalised_logps():
    p = priors([-2.0, -3.0], [2, 1])  # z = −1, −3
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert sum(p) == pytest.approx(1.0)


def test_node_value():
    assert node_value(0.6, 1.0, True, 0.5) == pytest.approx(0.8)
    assert node_value(0.6, None, True, 0.5) == pytest.approx(0.3)
    assert node_value(0.6, 1.0, False, 0.5) == pytest.approx(0.6)


def sample(toks, text, lp=-1.0, reason="stop"):
    return {"token_ids": toks, "text": text, "logprobs": [lp] * len(toks), "finish_reason": reason}


def test_add_children_dedupes_and_marks_terminals():
    root = Node([9, 9], tag=3)
    kids = add_children(
        root,
        [sample([1, 2], "x\n"), sample([1, 2], "x\n"), sample([], ""), sample([5], "end")],
        lambda s, depth: not s["text"].endswith("\n"),
    )
    assert [k.step_ids for k in kids] == [[1, 2], [5]]
    assert kids[0].ids == [9, 9, 1, 2] and kids[0].depth == 1 and kids[0].tag == 3
    assert [k.terminal for k in kids] == [False, True]
    assert kids[1].text() == "end"
    assert sum(k.prior for k in kids) == pytest.approx(1.0)


def hand_tree() -> Node:
    root = Node([0], visits=6)
    a = child(root, q=0.9, tok=1)
    child(root, q=0.2, tok=2)
    child(root, q=0.5, tok=3)
    child(a, q=0.7, tok=4)
    child(a, q=0.65, tok=5)
    return root


def test_extract_pairs_best_vs_worst_sibling_above_margin():
    root = hand_tree()
    pairs = extract_pairs(root, margin=0.1)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.parent is root and p.chosen.step_ids == [1] and p.rejected.step_ids == [2]
    assert p.margin == pytest.approx(0.7)
    both = extract_pairs(root, margin=0.0)
    assert [x.margin for x in both] == pytest.approx([0.7, 0.05])
    assert both[1].chosen.step_ids == [4] and both[1].parent.ids == [0, 1]


def test_run_search_hand_trace():
    """Priors: z = (−1/2, −2/2) → p = (0.6225, 0.3775). Values: step token 1 → 1, token 2 → 0.
    Round 1 expands each root (backup 0.5). Round 2 picks c0 (1 + 0.6225 > 0 + 0.3775) and expands
    it into two terminals (backup 0.5). Round 3 picks c0 (0.5 + 0.6225·√2/2 > 0.3775·√2) then its
    terminal child c0a (1 + …): nothing to expand, so one expand call fewer; c0a backs up 1."""
    calls = []

    def expand(leaves):
        calls.append(len(leaves))
        out = []
        for leaf in leaves:
            t = len(leaf.ids)
            samples = [sample([t, 1], "a\n", -0.5), sample([t, 2], "b\n", -1.0)]
            out.append(add_children(leaf, samples, lambda s, d: d >= 2))
        return out

    def evaluate(nodes):
        for n in nodes:
            n.value = 1.0 if n.step_ids[-1] == 1 else 0.0

    roots = [Node([7], tag=0), Node([8, 8], tag=1)]
    run_search(roots, 3, 1.0, expand, evaluate)
    assert calls == [2, 2]  # one batched expand per round that has open leaves
    for r in roots:
        c0, c1 = r.children
        assert c0.prior == pytest.approx(1 / (1 + math.exp(-0.5)))
        assert (r.visits, r.value_sum) == (3, pytest.approx(2.0))
        assert (c0.visits, c0.q) == (2, pytest.approx(0.75))
        assert (c1.visits, c1.q) == (0, 0.0)
        c0a, c0b = c0.children
        assert c0a.terminal and (c0a.visits, c0a.q) == (1, 1.0) and c0b.visits == 0
        pairs = extract_pairs(r)
        assert [(p.chosen, p.rejected) for p in pairs] == [(c0, c1), (c0a, c0b)]
        assert [p.margin for p in pairs] == pytest.approx([0.75, 1.0])
    stats = tree_stats(roots)
    assert stats == {"tree_size": 4.0, "max_depth": 2.0, "terminal_frac": 0.5, "root_visits": 3.0}


def test_equal_q_is_not_a_preference():
    root = Node([0])
    child(root, q=0.3, tok=1)
    child(root, q=0.3 + 1e-9, tok=2)
    assert extract_pairs(root) == []


# -- the algorithm on a fake experience ---------------------------------------------------------
def fake_lp(ids: list[int]) -> list[float]:
    """A log-prob per token that depends on the whole prefix (so self-evaluations differ)."""
    out, total = [], 0
    for t in ids:
        total += t
        out.append(-0.1 * ((t + total) % 5))
    return out


class Tok:
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 20) for c in text]


class FakeExp:
    """Deterministic steps; self-evaluation favours prefixes with an even sum of token ids."""

    tokenizer = Tok()
    step, policy_version = 0, 5

    def __init__(self, same: bool = False):
        self.same = same
        self.calls = {"generate_text": 0, "policy_logp": [], "score": 0}

    def generate_text(self, prompt_ids, n, max_tokens, stop=None):
        self.calls["generate_text"] += 1
        assert stop == ["\n"]
        out = []
        for ids in prompt_ids:
            rows = []
            for j in range(n):
                tok = 30 if self.same else 30 + j + len(ids) % 3
                rows.append(sample([tok, 31], f"s{tok}\n" if len(ids) < 8 else "done", -0.3))
            out.append(rows)
        return out

    def policy_logp(self, batch):
        self.calls["policy_logp"].append(len(batch))
        return torch.tensor([fake_lp(row) for row in batch["input_ids"].tolist()])

    def score(self, batch):
        self.calls["score"] += 1
        batch["scores"] = torch.ones(len(batch))
        return {}


def mcts(make_cfg, *over):
    return MCTSDPO(
        make_cfg(
            "algorithm.name=mcts_dpo",
            "algorithm.mcts_simulations=3",
            "algorithm.mcts_expand=3",
            "algorithm.mcts_depth=3",
            "learner.ranks=2",
            *over,
        )
    )


def test_collect_builds_adjacent_step_pairs(make_cfg):
    a = mcts(make_cfg)
    exp = FakeExp()
    prompts = [{"prompt_ids": [1, 2], "prompt": "P0"}, {"prompt_ids": [4], "prompt": "P1"}]
    batch = a.collect(exp, prompts)
    m = a.prepare(batch)
    assert exp.calls["generate_text"] == 3  # one batched call per simulation round
    assert all(n % 2 == 0 for n in exp.calls["policy_logp"])  # padded to the 2 learner ranks
    assert len(batch) % 2 == 0 and len(batch) >= 2
    for i in range(0, len(batch), 2):
        assert batch["prompt"][i] == batch["prompt"][i + 1]  # shared prefix
        assert batch["scores"][i] > batch["scores"][i + 1]  # chosen has the higher Q
        pl = batch["prompt_len"][i]
        assert torch.equal(batch["input_ids"][i, :pl], batch["input_ids"][i + 1, :pl])
        assert batch["response_mask"][i].sum() > 0
    assert m["mcts/pairs_per_prompt"] == len(batch) / 2 / 2
    assert m["mcts/tree_size"] > 3 and m["mcts/skipped_update"] == 0.0
    assert m["mcts/q_margin_min"] > 0 and set(batch["policy_version"]) == {5}


def test_no_pairs_falls_back_to_a_zero_mask_pair(make_cfg):
    a = mcts(make_cfg)
    batch = a.collect(FakeExp(same=True), [{"prompt_ids": [1, 2], "prompt": "P"}])
    m = a.prepare(batch)
    assert len(batch) == 2 and batch["response_mask"].sum() == 0
    assert m["mcts/skipped_update"] == 1.0 and m["mcts/pairs_per_prompt"] == 0.0
    assert m["dpo/pairs"] == 0.0
    batch.tensors["ref_logp"] = torch.zeros_like(batch["response_mask"])
    logp = torch.zeros_like(batch["response_mask"], requires_grad=True)
    loss, _ = a.loss(logp, batch, {"num_tokens": 0, "num_seqs": 2, "max_len": 4})
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().sum() == 0


def test_self_eval_is_yes_vs_no_probability(make_cfg):
    a = mcts(make_cfg, "learner.ranks=4")
    exp = FakeExp()
    nodes = [Node([1, 2]), Node([5])]
    got = a.self_eval(exp, nodes)
    assert exp.calls["policy_logp"] == [4]  # 2 nodes × (Yes, No), already a multiple of 4
    ask = Tok().encode("\nIs this step correct? Answer Yes or No:")
    yes, no = Tok().encode(" Yes"), Tok().encode(" No")
    for n, e in zip(nodes, got):
        head = n.ids + ask
        ly, ln = (sum(fake_lp(head + ans)[len(head) :]) for ans in (yes, no))
        assert e == pytest.approx(1 / (1 + math.exp(ln - ly)), rel=1e-5)
    assert len(set(got)) == 2  # the prefix matters


def pair_batch() -> Batch:
    # pair 1: pc = −2, rc = −3, pr = −4, rr = −3 → h = 2;  pair 2: all equal → h = 0
    b = Batch(
        {
            "response_mask": torch.tensor([[0.0, 1, 1]] * 4),
            "ref_logp": torch.tensor(
                [[0, -1.5, -1.5], [0, -2, -1], [0, -1, -1], [0, -1, -1]], dtype=torch.float32
            ),
        }
    )
    return b


PAIR_LOGP = [[0.0, -1, -1], [0, -2, -2], [0, -1, -1], [0, -1, -1]]
EXPECTED = (math.log1p(math.exp(-0.2)) + math.log(2)) / 2  # β = 0.1


def test_dpo_loss_on_hand_pairs(make_cfg):
    a = mcts(make_cfg, "algorithm.beta=0.1")
    counts = {"num_tokens": 8, "num_seqs": 4, "max_len": 3}
    loss, m = a.loss(torch.tensor(PAIR_LOGP), pair_batch(), counts)
    assert loss.item() == pytest.approx(EXPECTED, rel=1e-6)
    assert m["dpo/reward_acc"] == pytest.approx(0.5)
    assert m["dpo/margin"] == pytest.approx(0.1 * 2 / 2)
    # micro-batches of one pair each, global counts: the parts sum to the whole
    b = pair_batch()
    parts = [
        a.loss(torch.tensor(PAIR_LOGP[i : i + 2]), b.slice(i, i + 2), counts)[0] for i in (0, 2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(EXPECTED, rel=1e-6)


def test_padded_zero_mask_pairs_add_nothing(make_cfg):
    a = mcts(make_cfg, "algorithm.beta=0.1")
    b = pair_batch()
    pad = b.slice(0, 2)
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    padded = Batch.concat([b, pad])
    counts = {"num_tokens": 8, "num_seqs": 4, "max_len": 3}
    loss, m = a.loss(torch.tensor(PAIR_LOGP + PAIR_LOGP[:2]), padded, counts)
    assert loss.item() == pytest.approx(EXPECTED, rel=1e-6)
    assert m["dpo/reward_acc"] == pytest.approx(0.5)


def test_needs_and_config_errors(make_cfg):
    n = mcts(make_cfg).needs()
    assert n.reference and n.row_multiple == 2
    with pytest.raises(ConfigError, match="algorithm.mcts_alpha"):
        mcts(make_cfg, "algorithm.mcts_alpha=1.5")
    with pytest.raises(ConfigError, match="algorithm.mcts_expand"):
        mcts(make_cfg, "algorithm.mcts_expand=0")
    with pytest.raises(ConfigError, match="rollout.max_model_len"):
        mcts(make_cfg, "algorithm.step_max_tokens=512")


def test_state_dict_round_trip(make_cfg):
    a = mcts(make_cfg)
    a.collect(FakeExp(), [{"prompt_ids": [1, 2], "prompt": "P"}])
    a.update({})
    b = mcts(make_cfg)
    b.load_state_dict(a.state_dict())
    assert b.step == 1 and b.pairs_total == a.pairs_total > 0


def test_engine_seeds_are_fresh_for_every_call_and_sample(make_cfg):
    """Tree search calls generate_text once per round: no sample of a step may reuse a seed
    (vLLM seeds sample j of a request with seed + j)."""
    from rlpost.runtime.experience import ActorExperience

    exp = ActorExperience(make_cfg(), Tok(), rollout=None, reward=None)
    first = exp._seeds(2, 3)
    second = exp._seeds(3, 2)
    used = [s + j for s in first for j in range(3)] + [s + j for s in second for j in range(2)]
    assert len(set(used)) == len(used) == 12
    exp.step = 1
    again = exp._seeds(2, 3)
    fresh = ActorExperience(make_cfg(), Tok(), rollout=None, reward=None)
    assert fresh._seeds(2, 3) == first  # deterministic per (step, call order)
    assert again != first
