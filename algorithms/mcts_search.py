"""Monte Carlo tree search over reasoning steps (MCTS-DPO, Xie et al. 2024), in pure Python.

A node is a state: the prompt plus the steps taken so far, as token ids. The search is the
paper's, with the details its official code settles:

  per step  the response is built one step at a time; from the current node, run
            ``simulations`` simulations (``first_factor`` times as many from the prompt itself),
            then move to the most visited child and search again from there: the searched path.
  simulate  select   descend by PUCT  Q + c_puct·P·√N_parent / (1 + N)  to a node without
                     children;
            expand   sample k candidate next steps (P = softmax of their length-normalised
                     log-probs) and evaluate every one;
            continue pick the best new child by PUCT and expand it in turn, until a terminal
                     step: eos, a final answer, or the depth limit (whose step is generated to the
                     end of the answer), so the verifier's outcome reaches Q on every simulation
                     that ends there;
            backup   N += 1 on every node of the simulated path.

Values. A node's own value v is the self-evaluation C (the policy's confidence in the step); at a
terminal node v = O + C, O the outcome (+1 correct, −0.5 wrong by default). Q of a node without
children is v; Q of an expanded node is the mean of its children's Q weighted by max(1, N): an
unvisited child counts once, at its own value. The official code keeps Q relative to the parent
(reward = v(child) − v(parent)); that differs from this Q by a constant shared by siblings, so
PUCT choices, pairs and their margins are the same.

Pairs come along the searched path: at each of its nodes, the highest-Q visited child vs the
worst (or second-best) visited child, when their Q differ by more than a margin.

Model calls are injected (``search``'s ``expand`` / ``evaluate``), so everything here is testable
on hand-built trees; algorithms/mcts_dpo.py wires them to the rollout engines and the learner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(eq=False)
class Node:
    ids: list[int]  # prompt + steps up to and including this node's step
    step_ids: list[int] = field(default_factory=list)  # empty at the root
    step_text: str = ""
    step_logps: list[float] = field(default_factory=list)  # sampling log-probs of step_ids
    prior: float = 1.0
    depth: int = 0
    terminal: bool = False
    finish_reason: str = ""
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float | None = None  # this node's own evaluation v
    outcome: float | None = None  # O, once a verifier scored this node's full response
    tag: Any = None  # set on a root (e.g. the prompt's index); children inherit it

    @property
    def q(self) -> float:
        """v without children; else the children's Q, mean weighted by max(1, N)."""
        if not self.children:
            return 0.0 if self.value is None else self.value
        weights = [max(1, c.visits) for c in self.children]
        return sum(w * c.q for w, c in zip(weights, self.children)) / sum(weights)

    def path(self) -> list[Node]:
        """Root … self."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def text(self) -> str:
        """The response so far: every step's text from the root down."""
        return "".join(n.step_text for n in self.path())

    def nodes(self) -> list[Node]:
        """This subtree, breadth first."""
        out, i = [self], 0
        while i < len(out):
            out.extend(out[i].children)
            i += 1
        return out


def puct(child: Node, parent_visits: int, c_puct: float) -> float:
    return child.q + c_puct * child.prior * math.sqrt(parent_visits) / (1 + child.visits)


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (the first one on ties)."""
    return max(node.children, key=lambda c: puct(c, node.visits, c_puct))


def select_path(start: Node, c_puct: float) -> list[Node]:
    """start … the node without children (or terminal) that PUCT descends to."""
    path = [start]
    while path[-1].children and not path[-1].terminal:
        path.append(select_child(path[-1], c_puct))
    return path


def priors(cumulative_logps: Sequence[float], lengths: Sequence[int]) -> list[float]:
    """softmax(logp / length): the policy's preference among the sampled candidates, without
    favouring short steps (a sum of log-probs always does)."""
    z = [lp / max(n, 1) for lp, n in zip(cumulative_logps, lengths)]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def add_children(
    node: Node, samples: Sequence[dict], is_terminal: Callable[[dict, int], bool]
) -> list[Node]:
    """Children from sampled continuations (dicts with token_ids, text, logprobs, finish_reason and
    optionally cumulative_logprob); duplicates and empty samples are skipped."""
    seen: set[tuple[int, ...]] = set()
    kept = []
    for s in samples:
        key = tuple(s["token_ids"])
        if key and key not in seen:
            seen.add(key)
            kept.append(s)
    if not kept:
        return []
    lps = [
        s["cumulative_logprob"] if s.get("cumulative_logprob") is not None else sum(s["logprobs"])
        for s in kept
    ]
    ps = priors(lps, [len(s["token_ids"]) for s in kept])
    depth = node.depth + 1
    node.children = [
        Node(
            ids=node.ids + list(s["token_ids"]),
            step_ids=list(s["token_ids"]),
            step_text=s["text"],
            step_logps=list(s["logprobs"]),
            prior=p,
            depth=depth,
            terminal=is_terminal(s, depth),
            finish_reason=s.get("finish_reason") or "",
            parent=node,
            tag=node.tag,
        )
        for s, p in zip(kept, ps)
    ]
    return node.children


def outcome_value(score: float, correct: float = 1.0, wrong: float = -0.5) -> float:
    """O from a verifier score in [0, 1]: 1 → ``correct``, 0 → ``wrong``, linear in between."""
    return wrong + score * (correct - wrong)


def node_value(self_eval: float, outcome: float | None, terminal: bool) -> float:
    """v = O + C at a terminal step (O = 0 when nothing scored it); C elsewhere."""
    if terminal:
        return (outcome or 0.0) + self_eval
    return self_eval


def backup(path: Sequence[Node]) -> None:
    """One more visit on every node of a simulated path; Q follows from the tree (``Node.q``)."""
    for n in path:
        n.visits += 1


def simulate(
    starts: Sequence[Node],
    c_puct: float,
    max_depth: int,
    expand: Callable[[list[Node]], list[list[Node]]],
    evaluate: Callable[[list[Node]], None],
) -> list[Node]:
    """One simulation from each start node, in lockstep: every level is one ``expand`` call for
    all trees (the engines batch them) and one ``evaluate`` call for the new nodes. A leaf whose
    expansion yields nothing new ends the response there: it turns terminal and is evaluated as
    such. Returns the node each simulation ended at."""
    paths = [select_path(s, c_puct) for s in starts]
    while True:
        open_ = [p for p in paths if not p[-1].terminal and not p[-1].children]
        for p in open_:
            if p[-1].depth >= max_depth:  # only a broken terminal test gets here
                p[-1].terminal = True
        open_ = [p for p in open_ if not p[-1].terminal]
        if not open_:
            break
        born = expand([p[-1] for p in open_])
        dead = [p[-1] for p, kids in zip(open_, born) if not kids]
        for leaf in dead:
            leaf.terminal = True
        evaluate([c for kids in born for c in kids] + dead)
        for p, kids in zip(open_, born):
            if kids:
                p.append(select_child(p[-1], c_puct))
    for p in paths:
        backup(p)
    return [p[-1] for p in paths]


def best_child(node: Node) -> Node | None:
    """Where the searched path goes next: the most visited child, higher Q on ties."""
    if not node.children:
        return None
    return max(node.children, key=lambda c: (c.visits, c.q))


@dataclass
class SearchResult:
    paths: list[list[Node]]  # per tree: root … the node the path ended at
    ends: list[Node]  # the node every simulation ended at (all trees)


def search(
    roots: Sequence[Node],
    simulations: int,
    c_puct: float,
    max_depth: int,
    expand: Callable[[list[Node]], list[list[Node]]],
    evaluate: Callable[[list[Node]], None],
    first_factor: int = 1,
) -> SearchResult:
    """Build each tree's response step by step: ``simulations`` simulations from the current node
    (``first_factor``·simulations from the root), then move to its most visited child; stop at a
    terminal node. All trees advance together, so every model call is batched across them."""
    paths = [[r] for r in roots]
    ends: list[Node] = []
    first = True
    while live := [p for p in paths if not p[-1].terminal and p[-1].depth < max_depth]:
        for _ in range(simulations * (first_factor if first else 1)):
            ends += simulate([p[-1] for p in live], c_puct, max_depth, expand, evaluate)
        first = False
        for p in live:
            nxt = best_child(p[-1])
            if nxt is None:  # a dead end: simulate made it terminal
                continue
            p.append(nxt)
    return SearchResult(paths, ends)


TIE = 1e-6


@dataclass
class Pair:
    parent: Node
    chosen: Node
    rejected: Node

    @property
    def margin(self) -> float:
        return self.chosen.q - self.rejected.q


def path_pairs(
    path: Sequence[Node], margin: float = 0.0, rejected: Literal["worst", "second"] = "worst"
) -> list[Pair]:
    """At each node of a searched path: its highest-Q visited child vs its lowest-Q (``worst``) or
    second-highest-Q (``second``) visited child, when their Q differ by more than ``margin`` (and
    by more than TIE, float noise of equal values). Both share the node's prefix: a step-level
    preference. Never-visited children hold no simulated outcome and are left out."""
    pairs = []
    for node in path:
        ranked = sorted((c for c in node.children if c.visits), key=lambda c: -c.q)
        if len(ranked) < 2:
            continue
        best, other = ranked[0], ranked[-1] if rejected == "worst" else ranked[1]
        if best.q - other.q > max(margin, TIE):
            pairs.append(Pair(node, best, other))
    return pairs


def tree_stats(roots: Sequence[Node], result: SearchResult) -> dict[str, float]:
    """Size and shape of a forest and how its simulations ended (means per tree), for logging."""
    nodes = [n for r in roots for n in r.nodes()]
    trees = max(len(roots), 1)
    sims = max(len(result.ends), 1)
    generated = max(len(nodes) - len(roots), 1)
    return {
        "tree_size": (len(nodes) - len(roots)) / trees,  # steps generated per prompt
        "max_depth": float(max((n.depth for n in nodes), default=0)),
        "terminal_frac": sum(n.terminal for n in nodes) / generated,
        "verified_frac": sum(n.outcome is not None for n in nodes) / generated,
        "simulations": len(result.ends) / trees,
        "sim_verified_frac": sum(n.outcome is not None for n in result.ends) / sims,
        "path_len": sum(len(p) - 1 for p in result.paths) / trees,  # steps on the searched path
        "root_visits": sum(r.visits for r in roots) / trees,
    }


def pair_stats(pairs: Sequence[Pair], prompts: int) -> dict[str, float]:
    """Pairs per prompt and their Q margins (0 when there are none), for logging."""
    margins = [p.margin for p in pairs] or [0.0]
    return {
        "pairs_per_prompt": len(pairs) / max(prompts, 1),
        "q_margin_mean": sum(margins) / len(margins),
        "q_margin_max": max(margins),
        "q_margin_min": min(margins),
    }
