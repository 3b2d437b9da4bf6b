"""MCTS-DPO: the search on a deterministic toy step environment against a trace worked by hand
(tree, visits, Q, searched path, pairs); PUCT, Q and pair rules on hand-built trees; the
algorithm's collect on a fake experience (final-step generation, outcome values, reference in the
self-evaluation prompt, pair rows); DPO on hand-made pairs; padded pairs; state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.mcts_dpo import HINTED_EVAL_PROMPT, MCTSDPO, MCTSDPOOptions
from algorithms.mcts_search import (
    Node,
    add_children,
    node_value,
    outcome_value,
    path_pairs,
    priors,
    puct,
    search,
    select_path,
)
from rlpost.batch import Batch
from rlpost.config import ConfigError

# -- the toy step environment -------------------------------------------------------------------
# Prompt [0]. Step 1 is token 1 ("A") or 2 ("B"); step 2 (the depth limit, so terminal) is token 3
# or 4. Log-probs: 1 → −0.5, 2 → −1.0, 3 → −1.0, 4 → −0.5, so the priors are σ(±0.5):
P_HI, P_LO = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))  # 0.622459, 0.377541
LOGP = {1: -0.5, 2: -1.0, 3: -1.0, 4: -0.5}
SELF_EVAL = {
    (0, 1): 0.6,
    (0, 2): 0.4,
    (0, 1, 3): 0.7,
    (0, 1, 4): 0.2,
    (0, 2, 3): 0.5,
    (0, 2, 4): 0.9,
}
CORRECT = {(0, 1, 4), (0, 2, 3)}  # the verifier accepts these two answers
# Terminal values v = O + C:  A3 = −0.5 + 0.7 = 0.2,  A4 = 1 + 0.2 = 1.2,  B3 = 1 + 0.5 = 1.5,
# B4 = −0.5 + 0.9 = 0.4.


def toy_samples(depth: int) -> list[dict]:
    toks = (1, 2) if depth == 0 else (3, 4)
    return [
        {"token_ids": [t], "text": f"s{t}", "logprobs": [LOGP[t]], "finish_reason": "stop"}
        for t in toks
    ]


class Toy:
    def __init__(self):
        self.expanded: list[list[tuple]] = []

    def expand(self, leaves):
        self.expanded.append([tuple(leaf.ids) for leaf in leaves])
        return [add_children(x, toy_samples(x.depth), lambda s, d: d >= 2) for x in leaves]

    def evaluate(self, nodes):
        for n in nodes:
            key = tuple(n.ids)
            n.outcome = (1.0 if key in CORRECT else -0.5) if n.terminal else None
            n.value = node_value(SELF_EVAL[key], n.outcome, n.terminal)


def by_ids(root: Node) -> dict[tuple, Node]:
    return {tuple(n.ids): n for n in root.nodes()}


def test_search_on_the_toy_matches_the_hand_trace():
    """c_puct = 2, 2 simulations per step, 2× from the prompt (4 there). PUCT = Q + 2·P·√N/(1+N).

    sim 1  root has no children: expand it (A v .6, B v .4); N_root = 0, so PUCT = Q: A. Expand A
           (A3 v .2, A4 v 1.2); N_A = 0: A4, terminal. Q_A = (.2 + 1.2)/2 = .7.
    sim 2  root N 1: A .7 + 2·.622459/2 = 1.322459 > B .4 + 2·.377541 = 1.155082 → A;
           at A, N 1: A3 .2 + 2·.377541 = .955082 < A4 1.2 + 2·.622459/2 = 1.822459 → A4.
           Q_A = (1·.2 + 2·1.2)/3 = .866667.
    sim 3  root N 2: A .866667 + 2·.622459·√2/3 = 1.453536 < B .4 + 2·.377541·√2 = 1.467850 → B.
           Expand B (B3 v 1.5, B4 v .4); N_B = 0: B3. Q_B = (1.5 + .4)/2 = .95.
    sim 4  root N 3: A .866667 + 2·.622459·√3/3 = 1.585430 < B .95 + 2·.377541·√3/2 = 1.603921
           → B; at B, N 1: B3 1.5 + 2·.377541/2 = 1.877541 > B4 .4 + 2·.622459 = 1.644918 → B3.
           Q_B = (2·1.5 + .4)/3 = 1.133333.
    step   A and B have 2 visits each; B has the higher Q: the path goes to B.
    sim 5  from B, N 2: B3 1.5 + 2·.377541·√2/3 = 1.855950 < B4 .4 + 2·.622459·√2 = 2.160595 → B4.
    sim 6  from B, N 3: B3 1.5 + 2·.377541·√3/3 = 1.935949 > B4 .4 + 2·.622459·√3/2 = 1.478130
           → B3. Q_B = (3·1.5 + 1·.4)/4 = 1.225.
    step   B3 (3 visits) is terminal: the path ends.
    pairs  at the root B (1.225) vs A (.866667); at B, B3 (1.5) vs B4 (.4). A3 was never visited.
    """
    toy = Toy()
    root = Node([0])
    result = search([root], 2, 2.0, 2, toy.expand, toy.evaluate, first_factor=2)
    n = by_ids(root)
    assert toy.expanded == [[(0,)], [(0, 1)], [(0, 2)]]  # one model call per new level
    assert n[(0, 1)].prior == pytest.approx(P_HI) and n[(0, 2, 4)].prior == pytest.approx(P_HI)
    visits = {k: v.visits for k, v in n.items()}
    assert visits == {
        (0,): 4,  # the two simulations from B start at B
        (0, 1): 2,
        (0, 2): 4,
        (0, 1, 3): 0,
        (0, 1, 4): 2,
        (0, 2, 3): 3,
        (0, 2, 4): 1,
    }
    q = {k: v.q for k, v in n.items()}
    assert q == pytest.approx(
        {
            (0,): (2 * 2.6 / 3 + 4 * 1.225) / 6,  # 1.105556
            (0, 1): 2.6 / 3,
            (0, 2): 1.225,
            (0, 1, 3): 0.2,
            (0, 1, 4): 1.2,
            (0, 2, 3): 1.5,
            (0, 2, 4): 0.4,
        }
    )
    assert [[tuple(x.ids) for x in p] for p in result.paths] == [[(0,), (0, 2), (0, 2, 3)]]
    ends = [tuple(e.ids) for e in result.ends]
    assert ends == [(0, 1, 4), (0, 1, 4), (0, 2, 3), (0, 2, 3), (0, 2, 4), (0, 2, 3)]
    assert all(e.outcome is not None for e in result.ends)  # every simulation reached a verdict
    pairs = path_pairs(result.paths[0])
    got = [(tuple(p.parent.ids), tuple(p.chosen.ids), tuple(p.rejected.ids)) for p in pairs]
    assert got == [((0,), (0, 2), (0, 1)), ((0, 2), (0, 2, 3), (0, 2, 4))]
    assert [p.margin for p in pairs] == pytest.approx([1.225 - 2.6 / 3, 1.1])
    assert len(path_pairs(result.paths[0], margin=0.5)) == 1  # only B3 vs B4 clears 0.5


def test_search_stops_at_a_dead_end():
    """A leaf whose expansion yields nothing ends the response there and is evaluated as final."""
    evaluated = []

    def expand(leaves):
        return [[] for _ in leaves]

    def evaluate(nodes):
        evaluated.extend(nodes)
        for n in nodes:
            n.value, n.outcome = 0.3, -0.5

    root = Node([5])
    result = search([root], 3, 1.0, 4, expand, evaluate)
    assert root.terminal and evaluated == [root] and root.visits == 3
    assert [len(p) for p in result.paths] == [1] and len(result.ends) == 3


# -- search machinery on hand-built trees -------------------------------------------------------
def child(parent: Node, value: float, visits: int = 1, prior: float = 0.5, tok: int = 1) -> Node:
    n = Node(parent.ids + [tok], [tok], prior=prior, depth=parent.depth + 1, parent=parent)
    n.visits, n.value = visits, value
    parent.children.append(n)
    return n


def test_puct_value():
    root = Node([0], visits=4)
    c = child(root, 0.5, visits=1, prior=0.4)
    assert puct(c, 4, 1.0) == pytest.approx(0.5 + 0.4 * 2 / 2)
    assert puct(c, 4, 0.0) == pytest.approx(0.5)


def test_select_path_trades_q_against_exploration():
    root = Node([0], visits=4)
    a = child(root, 0.6, visits=3, prior=0.2, tok=1)  # 0.6 + 0.2·2/4 = 0.7
    b = child(root, 0.5, visits=1, prior=0.8, tok=2)  # 0.5 + 0.8·2/2 = 1.3
    assert select_path(root, 1.0) == [root, b]
    assert select_path(root, 0.0) == [root, a]
    deep = child(a, 0.6, tok=3)
    assert select_path(root, 0.0) == [root, a, deep]  # descends to a node without children
    a.terminal = True
    assert select_path(root, 0.0) == [root, a]  # never below a terminal node


def test_q_is_the_visit_weighted_mean_of_the_children():
    root = Node([0], value=0.9)
    assert root.q == 0.9 and Node([0]).q == 0.0  # own value without children
    child(root, 1.0, visits=3)
    child(root, 0.2, visits=0)  # unvisited: counts once, at its own value
    assert root.q == pytest.approx((3 * 1.0 + 0.2) / 4)


def test_values_and_outcomes():
    assert outcome_value(1.0) == 1.0 and outcome_value(0.0) == -0.5
    assert outcome_value(0.5, correct=1.0, wrong=-1.0) == 0.0
    assert node_value(0.6, 1.0, True) == pytest.approx(1.6)
    assert node_value(0.6, None, True) == pytest.approx(0.6)
    assert node_value(0.6, 1.0, False) == pytest.approx(0.6)


def test_priors_are_softmax_of_length_normalised_logps():
    p = priors([-2.0, -3.0], [2, 1])  # z = −1, −3
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert sum(p) == pytest.approx(1.0)


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


def test_path_pairs_best_vs_worst_or_second_among_visited_siblings():
    root = Node([0])
    a = child(root, 0.9, tok=1)
    child(root, 0.2, tok=2)
    child(root, 0.5, tok=3)
    child(root, -1.0, visits=0, tok=4)  # never visited: never a pair member
    a4 = child(a, 0.7, tok=5)
    a5 = child(a, 0.65, tok=6)
    path = [root, a, a4]
    worst = path_pairs(path)
    assert [(p.chosen.step_ids, p.rejected.step_ids) for p in worst] == [([1], [2]), ([5], [6])]
    assert [p.margin for p in worst] == pytest.approx([0.675 - 0.2, 0.05])  # Q_a = (.7 + .65)/2
    second = path_pairs(path, rejected="second")
    assert [(p.chosen.step_ids, p.rejected.step_ids) for p in second] == [([1], [3]), ([5], [6])]
    assert [p.parent for p in second] == [root, a] and second[1].rejected is a5
    assert len(path_pairs(path, margin=0.1)) == 1
    assert path_pairs([root]) == worst[:1]  # only nodes on the path give pairs


def test_equal_q_is_not_a_preference():
    root = Node([0])
    child(root, 0.3, tok=1)
    child(root, 0.3 + 1e-9, tok=2)
    assert path_pairs([root]) == []


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


class ToyExp:
    """The toy environment behind the experience API: steps from ``toy_samples``, the verifier
    accepts CORRECT (by completion text), log-probs from ``fake_lp``."""

    tokenizer = Tok()
    policy_version = 5

    def __init__(self):
        self.gen_calls: list[tuple] = []
        self.logp_rows: list[int] = []

    def generate_text(self, prompt_ids, n, max_tokens, stop=None):
        self.gen_calls.append((len(prompt_ids), n, max_tokens, stop))
        out = [toy_samples(len(ids) - 1)[:n] for ids in prompt_ids]
        for s in (s for row in out for s in row):
            s["text"] += stop[0] if stop else ""  # a step stopped at the delimiter keeps it
        return out

    def policy_logp(self, batch):
        self.logp_rows.append(len(batch))
        return torch.tensor([fake_lp(row) for row in batch["input_ids"].tolist()])

    def score(self, batch):
        right = {"s1\ns4", "s2\ns3"}
        batch["scores"] = torch.tensor([float(c in right) for c in batch["completion"]])
        return {}


def options(**over) -> MCTSDPOOptions:
    base = dict(
        mcts_simulations_per_step=2,
        mcts_first_step_factor=2,
        mcts_expand_width=2,
        mcts_max_depth=2,
        mcts_c_puct=2.0,
        step_max_tokens=8,
    )
    return MCTSDPOOptions(**{**base, **over})


def mcts(make_cfg, *over, **opts) -> MCTSDPO:
    cfg = make_cfg("algorithm.name=mcts_dpo", "learner.ranks=2", "rollout.max_new_tokens=24", *over)
    return MCTSDPO(cfg, options(**opts))


def table_self_eval(exp, prompts, nodes):
    return [SELF_EVAL[(0, *n.ids[1:])] for n in nodes]


def test_collect_on_the_toy_gives_the_hand_traced_pairs(make_cfg):
    a = mcts(make_cfg)
    a.self_eval = table_self_eval  # the toy's C (self_eval itself is tested below)
    exp = ToyExp()
    batch = a.collect(exp, [{"prompt_ids": [0], "prompt": "P", "answer": "7"}])
    m = a.prepare(batch)
    # root: a delimited step of <= 8 tokens; A and B: the last step, to the end of the answer
    # (max_new_tokens 24 − 1 full step of 8 = 16 tokens), without a stop string
    assert exp.gen_calls == [(1, 2, 8, ["\n"]), (1, 2, 16, None), (1, 2, 16, None)]
    assert batch["completion"] == ["s2\n", "s1\n", "s3", "s4"]  # B > A at the root, B3 > B4 at B
    assert batch["prompt"] == ["P", "P", "Ps2\n", "Ps2\n"]
    assert batch["scores"].tolist() == pytest.approx([1.225, 2.6 / 3, 1.5, 0.4])
    assert batch["input_ids"][2].tolist()[:2] == [0, 2] == batch["input_ids"][3].tolist()[:2]
    assert m["dpo/pairs"] == 2.0 and m["mcts/pairs_per_prompt"] == 2.0
    assert m["mcts/simulations"] == 6.0 and m["mcts/sim_verified_frac"] == 1.0
    assert m["mcts/tree_size"] == 6.0 and m["mcts/path_len"] == 2.0
    assert m["mcts/verified_frac"] == pytest.approx(4 / 6)  # the four answers; A and B are steps
    assert m["mcts/outcome_mean"] == pytest.approx(0.5) and m["mcts/skipped_update"] == 0.0
    assert set(batch["policy_version"]) == {5} and a.pairs_total == 2


def test_terminal_values_add_the_configured_outcome_to_the_self_evaluation(make_cfg):
    a = mcts(make_cfg, mcts_outcome_correct=2.0, mcts_outcome_wrong=-1.0)
    a.self_eval = table_self_eval
    a._judged, a._outcomes = [], []
    b = Node([0, 2], [2], "s2\n", depth=1, parent=Node([0], tag=0), tag=0)
    b3 = Node([0, 2, 3], [3], "s3", depth=2, terminal=True, parent=b, tag=0)
    b4 = Node([0, 2, 4], [4], "s4", depth=2, terminal=True, parent=b, tag=0)
    a.evaluate(ToyExp(), [{"prompt": "P"}], [b, b3, b4])
    assert (b.value, b.outcome) == (0.4, None)  # not an answer: the self-evaluation alone
    assert (b3.value, b3.outcome) == (pytest.approx(2.0 + 0.5), 2.0)  # "s2\ns3" is right
    assert (b4.value, b4.outcome) == (pytest.approx(-1.0 + 0.9), -1.0)


def test_no_pairs_falls_back_to_a_zero_mask_pair(make_cfg):
    a = mcts(make_cfg)
    a.self_eval = lambda exp, prompts, nodes: [0.5] * len(nodes)
    exp = ToyExp()
    exp.score = lambda batch: batch.tensors.__setitem__("scores", torch.ones(len(batch)))
    batch = a.collect(exp, [{"prompt_ids": [0], "prompt": "P"}])  # every answer equal
    m = a.prepare(batch)
    assert len(batch) == 2 and batch["response_mask"].sum() == 0
    assert m["mcts/skipped_update"] == 1.0 and m["mcts/pairs_per_prompt"] == 0.0
    assert m["dpo/pairs"] == 0.0
    batch.tensors["ref_logp"] = torch.zeros_like(batch["response_mask"])
    logp = torch.zeros_like(batch["response_mask"], requires_grad=True)
    loss, _ = a.loss(logp, batch, {"num_tokens": 0, "num_seqs": 2, "max_len": 4})
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().sum() == 0


def test_self_eval_shows_the_reference_solution(make_cfg):
    a = mcts(make_cfg, "learner.ranks=4")
    exp = ToyExp()
    prompts = [{"solution": "2+2=4"}, {"answer": 7}, {"other": "x"}]
    nodes = [Node([1, 2], tag=0), Node([5], tag=1), Node([6], tag=2)]
    got = a.self_eval(exp, prompts, nodes)
    assert exp.logp_rows == [8]  # 3 nodes × (Yes, No), padded to a multiple of the 4 ranks
    yes, no = Tok().encode(" Yes"), Tok().encode(" No")
    asks = [
        Tok().encode(HINTED_EVAL_PROMPT.format(reference="2+2=4")),
        Tok().encode(HINTED_EVAL_PROMPT.format(reference="7")),
        Tok().encode("\nIs this step correct? Answer Yes or No:"),  # no reference in the row
    ]
    for n, ask, e in zip(nodes, asks, got):
        head = n.ids + ask
        ly, ln = (sum(fake_lp(head + ans)[len(head) :]) for ans in (yes, no))
        assert e == pytest.approx(1 / (1 + math.exp(ln - ly)), rel=1e-5)
    assert "Reference solution: 2+2=4" in HINTED_EVAL_PROMPT.format(reference="2+2=4")


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
    with pytest.raises(ConfigError, match="algorithm.mcts_rejected"):
        mcts(make_cfg, mcts_rejected="best")
    with pytest.raises(ConfigError, match="algorithm.mcts_expand_width"):
        mcts(make_cfg, mcts_expand_width=0)
    with pytest.raises(ConfigError, match="algorithm.mcts_simulations_per_step"):
        mcts(make_cfg, mcts_simulations_per_step=0)
    with pytest.raises(ConfigError, match="rollout.max_model_len"):
        mcts(make_cfg, step_max_tokens=4096)


def test_options_come_from_the_algorithm_config(make_cfg):
    cfg = make_cfg("algorithm.name=mcts_dpo", "algorithm.mcts_c_puct=2.5")
    o = MCTSDPO(cfg).o
    assert o.mcts_c_puct == 2.5 and o.mcts_rejected == "worst" and o.mcts_outcome_wrong == -0.5


def test_state_dict_round_trip(make_cfg):
    a = mcts(make_cfg)
    a.self_eval = table_self_eval
    a.collect(ToyExp(), [{"prompt_ids": [0], "prompt": "P"}])
    a.update({})
    b = mcts(make_cfg)
    b.load_state_dict(a.state_dict())
    assert b.step == 1 and b.pairs_total == a.pairs_total == 2


def test_engine_seeds_are_fresh_for_every_call_and_sample(make_cfg):
    """Tree search calls generate_text once per level: no sample of a step may reuse a seed
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
