"""Monte Carlo tree search over reasoning steps (MCTS-DPO, Xie et al. 2024), in pure Python.

A node is a state: the prompt plus the steps taken so far, as token ids. The search is AlphaZero's
loop with the language model as both the policy prior and (part of) the evaluator:

  select   descend by PUCT  Q + c_puct·P·√N_parent / (1 + N)  to a node without children;
  expand   sample k candidate next steps from the policy (P = softmax of their length-normalised
           log-probs), evaluate each new child;
  backup   add a value to N and W = ΣV of every node on the path.

Value of a new child: α·outcome + (1−α)·self-evaluation at a terminal step, the self-evaluation
alone elsewhere (no outcome exists yet). The value backed up after an expansion is the mean of
the new children's values: a one-step look-ahead that carries outcome rewards up at once; a
terminal leaf backs up its own value. Q = W/N, or the node's own value while N = 0.

Model calls are injected (``run_search``'s ``expand`` / ``evaluate``), so everything here is
testable on hand-built trees; algorithms/mcts_dpo.py wires them to the rollout engines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


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
    value_sum: float = 0.0
    value: float | None = None  # this node's own evaluation
    tag: Any = None  # set on a root (e.g. the prompt's index); children inherit it

    @property
    def q(self) -> float:
        if self.visits:
            return self.value_sum / self.visits
        return 0.0 if self.value is None else self.value

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


def select_leaf(root: Node, c_puct: float) -> Node:
    """Follow the highest PUCT score (first child on ties) down to a node without children."""
    node = root
    while node.children:
        node = max(node.children, key=lambda c: puct(c, node.visits, c_puct))
    return node


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


def node_value(self_eval: float, outcome: float | None, terminal: bool, alpha: float) -> float:
    """α·outcome + (1−α)·self-evaluation at a terminal step; the self-evaluation elsewhere."""
    if terminal:
        return alpha * (outcome or 0.0) + (1.0 - alpha) * self_eval
    return self_eval


def backup(node: Node, value: float) -> None:
    for n in node.path():
        n.visits += 1
        n.value_sum += value


def run_search(
    roots: Sequence[Node],
    simulations: int,
    c_puct: float,
    expand: Callable[[list[Node]], list[list[Node]]],
    evaluate: Callable[[list[Node]], None],
) -> None:
    """``simulations`` rounds; each round selects one leaf per tree, expands all of them with one
    ``expand`` call (the engines batch across trees), sets every new child's ``value`` with one
    ``evaluate`` call, then backs up."""
    for _ in range(simulations):
        leaves = [select_leaf(r, c_puct) for r in roots]
        open_ = [leaf for leaf in leaves if not leaf.terminal]
        born = expand(open_) if open_ else []
        fresh = [c for kids in born for c in kids]
        if fresh:
            evaluate(fresh)
        grown = {id(leaf): kids for leaf, kids in zip(open_, born)}
        for leaf in leaves:
            kids = grown.get(id(leaf))
            if kids:
                backup(leaf, sum(c.value or 0.0 for c in kids) / len(kids))
            else:  # terminal, or nothing new could be sampled: re-use what is known
                if not leaf.terminal and not leaf.children:
                    leaf.terminal = True  # a dead end: never select it for expansion again
                backup(leaf, leaf.q)


TIE = 1e-6


@dataclass
class Pair:
    parent: Node
    chosen: Node
    rejected: Node

    @property
    def margin(self) -> float:
        return self.chosen.q - self.rejected.q


def extract_pairs(root: Node, margin: float = 0.0) -> list[Pair]:
    """Per expanded node (breadth first): its highest-Q child vs its lowest-Q child, when their Q
    differ by more than ``margin`` (and by more than TIE, float noise of equal values). Both share
    the parent's prefix: a step-level preference."""
    pairs = []
    for node in root.nodes():
        if len(node.children) < 2:
            continue
        best = max(node.children, key=lambda c: c.q)
        worst = min(node.children, key=lambda c: c.q)
        if best is not worst and best.q - worst.q > max(margin, TIE):
            pairs.append(Pair(node, best, worst))
    return pairs


def tree_stats(roots: Sequence[Node]) -> dict[str, float]:
    """Size and shape of a forest (means per tree), for logging."""
    nodes = [n for r in roots for n in r.nodes()]
    trees = max(len(roots), 1)
    return {
        "tree_size": (len(nodes) - len(roots)) / trees,  # steps generated per prompt
        "max_depth": float(max((n.depth for n in nodes), default=0)),
        "terminal_frac": sum(n.terminal for n in nodes) / max(len(nodes) - len(roots), 1),
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
