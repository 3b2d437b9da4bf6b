"""MCTS-DPO (Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference
Learning"): per prompt, build the response step by step with a tree search from each step (the
current policy proposes steps and judges them; the verifier scores finished answers); along the
searched path, the best vs the worst sibling step by Q is a step-level preference pair; DPO on
them. Each training step searches with the current weights (on-policy, iterative rounds).

The tree machinery (PUCT, simulation to a terminal step, backup, pairs) is in
algorithms/mcts_search.py; knobs are ``MCTSDPOOptions``, read from ``cfg.algorithm``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch

from algorithms.base import Algorithm, Needs, register
from algorithms.dpo import DPO
from algorithms.mcts_search import (
    Node,
    Pair,
    SearchResult,
    node_value,
    outcome_value,
    pair_stats,
    path_pairs,
    search,
    tree_stats,
)
from algorithms.mcts_search import add_children as grow
from envs.steps import StepEnv
from rlpost.batch import Batch, build_sequences
from rlpost.config import ConfigError, option
from rlpost.groups import group_ids_for
from rlpost.objective import sequence_logp

# Self-evaluation: the policy's p(" Yes") / (p(" Yes") + p(" No")) after the response so far and
# one of these questions (with the data's reference solution when a row has one, as the paper's).
EVAL_PROMPT = "\nIs this step correct? Answer Yes or No:"
HINTED_EVAL_PROMPT = (
    "\nReference solution: {reference}\n"
    "Compared with the reference, is the solution above heading the right way? Answer Yes or No:"
)
ANSWERS = (" Yes", " No")


@dataclass
class MCTSDPOOptions:
    """MCTS-DPO's knobs (``algorithm.<name>``); the official code's names in parentheses."""

    mcts_simulations_per_step: int = option(
        5, "simulations from each node of the searched path (n_iters)"
    )
    mcts_first_step_factor: int = option(
        4, "times as many simulations from the prompt itself (official: 4)"
    )
    mcts_expand_width: int = option(2, "candidate steps sampled per expansion (n_actions)")
    mcts_max_depth: int = option(
        3, "steps per response; the step at this depth finishes the answer (depth_limit)"
    )
    mcts_c_puct: float = option(1.0, "PUCT exploration constant (w_exp)")
    mcts_margin: float = option(0.0, "min Q gap between a pair's chosen and rejected step")
    mcts_rejected: Literal["worst", "second"] = option(
        "worst", "rejected step = worst or second-best visited sibling by Q"
    )
    mcts_outcome_correct: float = option(1.0, "outcome value O of a correct answer")
    mcts_outcome_wrong: float = option(-0.5, "outcome value O of a wrong answer")
    mcts_reference_columns: list[str] = option(
        ["solution", "answer"],
        "data columns tried in order for the self-evaluation's reference solution",
    )
    step_delimiter: str = option("\n", "step delimiter")
    step_max_tokens: int = option(32, "max tokens per step")

    @classmethod
    def from_config(cls, algorithm) -> MCTSDPOOptions:
        """The fields ``cfg.algorithm`` carries; defaults for any it lacks (an older config)."""
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(algorithm, n) for n in names if hasattr(algorithm, n)})


@register
class MCTSDPO(Algorithm):
    name = "mcts_dpo"
    Options = MCTSDPOOptions

    def __init__(self, cfg, options: MCTSDPOOptions | None = None) -> None:
        super().__init__(cfg)
        o = self.o = options or MCTSDPOOptions.from_config(cfg.algorithm)
        for key in (
            "mcts_simulations_per_step",
            "mcts_first_step_factor",
            "mcts_expand_width",
            "mcts_max_depth",
            "step_max_tokens",
        ):
            if getattr(o, key) < 1:
                raise ConfigError(f"algorithm.{key}: must be >= 1, got {getattr(o, key)}")
        if o.mcts_rejected not in ("worst", "second"):
            raise ConfigError(f"algorithm.mcts_rejected: worst or second, got {o.mcts_rejected!r}")
        if not o.step_delimiter:
            raise ConfigError("algorithm.step_delimiter: must not be empty")
        longest = cfg.data.max_prompt_len + self.response_budget() + 32
        if longest > cfg.rollout.max_model_len:
            raise ConfigError(
                f"rollout.max_model_len: {cfg.rollout.max_model_len} < data.max_prompt_len + "
                f"max(rollout.max_new_tokens, algorithm.mcts_max_depth*algorithm.step_max_tokens)"
                f" + 32 = {longest}"
            )
        self.env = StepEnv(delimiter=o.step_delimiter, max_depth=o.mcts_max_depth)
        self.pairs_total = 0
        self._stats: dict[str, float] = {}

    def response_budget(self) -> int:
        """Longest response: max_depth − 1 steps, then the last step's tokens."""
        return (self.o.mcts_max_depth - 1) * self.o.step_max_tokens + self.last_step_tokens()

    def last_step_tokens(self) -> int:
        """The step at the depth limit finishes the answer: it may use what max_new_tokens leaves
        after max_depth − 1 full steps, and never less than one step."""
        o = self.o
        left = self.cfg.rollout.max_new_tokens - (o.mcts_max_depth - 1) * o.step_max_tokens
        return max(o.step_max_tokens, left)

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=1, reference=True, row_multiple=2)

    # -- driver: search → pairs -----------------------------------------------------------------
    def collect(self, exp, prompts: list[dict]) -> Batch:
        o = self.o
        roots = [Node(ids=list(p["prompt_ids"]), tag=i) for i, p in enumerate(prompts)]
        self._judged: list[float] = []
        self._outcomes: list[float] = []
        result = search(
            roots,
            o.mcts_simulations_per_step,
            o.mcts_c_puct,
            o.mcts_max_depth,
            expand=lambda leaves: self.expand(exp, leaves),
            evaluate=lambda nodes: self.evaluate(exp, prompts, nodes),
            first_factor=o.mcts_first_step_factor,
        )
        pairs = self.pairs(result, o.mcts_margin)
        relaxed = not pairs and o.mcts_margin > 0
        if relaxed:  # a weak policy may never clear the margin: any distinct sibling Q will do
            pairs = self.pairs(result, 0.0)
        self.pairs_total += len(pairs)
        self._stats = self.search_metrics(roots, result, pairs, relaxed)
        return self.pair_batch(exp, prompts, pairs, roots)

    def pairs(self, result: SearchResult, margin: float) -> list[Pair]:
        return [p for path in result.paths for p in path_pairs(path, margin, self.o.mcts_rejected)]

    def expand(self, exp, leaves: list[Node]) -> list[list[Node]]:
        """One batched generation per kind of step for every leaf of every tree (vLLM reuses the
        shared prefixes): a step ends at the delimiter; at the depth limit it finishes the answer."""
        o = self.o
        last = [leaf.depth + 1 >= o.mcts_max_depth for leaf in leaves]
        kids: dict[int, list[Node]] = {}
        for final in (False, True):
            group = [leaf for leaf, f in zip(leaves, last) if f == final]
            if not group:
                continue
            outs = exp.generate_text(
                [leaf.ids for leaf in group],
                n=o.mcts_expand_width,
                max_tokens=self.last_step_tokens() if final else o.step_max_tokens,
                stop=None if final else [o.step_delimiter],
            )
            for leaf, samples in zip(group, outs):
                kids[id(leaf)] = grow(leaf, samples, self.is_terminal)
        return [kids[id(leaf)] for leaf in leaves]

    def is_terminal(self, sample: dict, depth: int) -> bool:
        """Ended by eos (stopped without the delimiter), a final answer, emptiness or depth."""
        text = sample["text"]
        eos = sample.get("finish_reason") == "stop" and not text.endswith(self.o.step_delimiter)
        return self.env.is_terminal(text, depth, eos)

    def evaluate(self, exp, prompts: list[dict], nodes: list[Node]) -> None:
        """v = C for every node, + O for the terminal ones (the verifier's score of the answer)."""
        judged = self.self_eval(exp, prompts, nodes)
        ends = [n for n in nodes if n.terminal]
        scores = self.outcome(exp, prompts, ends) if ends else {}
        o = self.o
        for n, c in zip(nodes, judged):
            s = scores.get(id(n))
            n.outcome = (
                None
                if s is None
                else outcome_value(s, o.mcts_outcome_correct, o.mcts_outcome_wrong)
            )
            n.value = node_value(c, n.outcome, n.terminal)
        self._judged += judged
        self._outcomes += list(scores.values())

    def reference(self, row: dict) -> str:
        """The row's reference solution: the first of ``mcts_reference_columns`` it has."""
        for col in self.o.mcts_reference_columns:
            ref = row.get(col)
            if isinstance(ref, (list, tuple)):
                ref = self.o.step_delimiter.join(str(x) for x in ref)
            if ref is not None and str(ref).strip():
                return str(ref).strip()
        return ""

    def self_eval(self, exp, prompts: list[dict], nodes: list[Node]) -> list[float]:
        """p(Yes) / (p(Yes) + p(No)) after the evaluation question, from the learner policy."""
        tok = exp.tokenizer
        asks: dict[int, list[int]] = {}
        for n in nodes:
            if n.tag not in asks:
                ref = self.reference(prompts[n.tag])
                text = HINTED_EVAL_PROMPT.format(reference=ref) if ref else EVAL_PROMPT
                asks[n.tag] = tok.encode(text, add_special_tokens=False)
        yes, no = (tok.encode(t, add_special_tokens=False) for t in ANSWERS)
        heads = [n.ids + asks[n.tag] for n in nodes for _ in (0, 1)]
        tails = [yes, no] * len(nodes)
        extra = (-len(heads)) % self.cfg.learner.ranks  # ZeRO-3 ranks must all run forwards
        heads, tails = heads + heads[:1] * extra, tails + tails[:1] * extra
        batch = build_sequences(heads, tails, pad_id=tok.pad_token_id or 0)
        seq = sequence_logp(exp.policy_logp(batch).float(), batch["response_mask"])
        return torch.sigmoid(seq[0 : 2 * len(nodes) : 2] - seq[1 : 2 * len(nodes) : 2]).tolist()

    def outcome(self, exp, prompts: list[dict], ends: list[Node]) -> dict[int, float]:
        """The reward group's score of each terminal node's full response (task verifier etc.)."""
        rows = [prompts[n.tag] for n in ends]
        cols = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt_ids",)}
        batch = Batch({"node": torch.arange(len(ends))}, cols)
        batch["completion"] = [n.text() for n in ends]
        exp.score(batch)  # rows whose reward is None are dropped: they get no outcome
        return {id(ends[int(i)]): float(s) for i, s in zip(batch["node"], batch["scores"])}

    def pair_batch(self, exp, prompts, pairs: list[Pair], roots: list[Node]) -> Batch:
        """Rows 2i / 2i+1 = chosen / rejected step after their shared prefix."""
        skipped = not pairs
        if skipped:  # nothing to prefer: one zero-mask pair keeps the step (and its sync) going
            kid = next((n for r in roots for n in r.nodes() if n.step_ids), None)
            if kid is None:  # not one step was sampled: stand in the prompt's last token
                r = roots[0]
                kid = Node(r.ids, r.ids[-1:], step_logps=[0.0], parent=Node(r.ids[:-1]), tag=r.tag)
            pairs = [Pair(kid.parent, kid, kid)]
        nodes = [n for p in pairs for n in (p.chosen, p.rejected)]
        batch = build_sequences(
            [n.parent.ids for n in nodes],
            [n.step_ids for n in nodes],
            [n.step_logps for n in nodes],
            pad_id=exp.tokenizer.pad_token_id or 0,
        )
        if skipped:
            batch["response_mask"] = torch.zeros_like(batch["response_mask"])
        batch["scores"] = torch.tensor([n.q for n in nodes], dtype=torch.float32)
        batch["prompt"] = [prompts[n.tag]["prompt"] + n.parent.text() for n in nodes]
        batch["completion"] = [n.step_text for n in nodes]
        batch["group_id"] = group_ids_for(self.step, len(nodes) // 2, 2)
        batch["policy_version"] = [exp.policy_version] * len(nodes)
        batch["finish_reason"] = [n.finish_reason for n in nodes]
        self._stats["mcts/skipped_update"] = float(skipped)
        return batch

    def search_metrics(self, roots, result: SearchResult, pairs: list[Pair], relaxed: bool) -> dict:
        judged, outs = self._judged, self._outcomes
        stats = {**tree_stats(roots, result), **pair_stats(pairs, len(roots))}
        return {
            **{f"mcts/{k}": v for k, v in stats.items()},
            "mcts/relaxed_margin": float(relaxed),
            "mcts/self_eval_mean": sum(judged) / max(len(judged), 1),
            "mcts/outcome_mean": sum(outs) / max(len(outs), 1),
            "mcts/scored_leaves": float(len(outs)),
        }

    def prepare(self, batch: Batch) -> dict[str, float]:
        pairs = 0.0 if self._stats["mcts/skipped_update"] else float(len(batch) // 2)
        return {**self._stats, "dpo/pairs": pairs}

    # -- learner: DPO on the step pairs, exactly as DPO trains on its pairs -----------------------
    loss = DPO.loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pairs_total": self.pairs_total}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pairs_total = int(state.get("pairs_total", 0))
