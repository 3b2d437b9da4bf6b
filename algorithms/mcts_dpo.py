"""MCTS-DPO (Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference
Learning"): per prompt, a tree search over reasoning steps with the current policy; sibling steps
with the highest vs lowest Q form step-level preference pairs; DPO on them. Each step searches
with the current weights, so the preference data stays on-policy (iterative rounds).

The tree machinery (PUCT, backup, pair extraction) is in algorithms/mcts_search.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, Needs, as_floats, register
from algorithms.mcts_search import (
    Node,
    Pair,
    extract_pairs,
    node_value,
    pair_stats,
    run_search,
    tree_stats,
)
from algorithms.mcts_search import add_children as grow
from envs.steps import StepEnv
from rlpost.batch import Batch, build_sequences
from rlpost.config import ConfigError, option
from rlpost.objective import dpo_loss, sequence_logp

EVAL_PROMPT = "\nIs this step correct? Answer Yes or No:"
ANSWERS = (" Yes", " No")


@dataclass
class MCTSDPOOptions:
    mcts_simulations: int = option(8, "simulations per prompt")
    mcts_expand: int = option(3, "candidate steps per expansion")
    mcts_depth: int = option(4, "max depth in steps")
    mcts_c_puct: float = option(1.0, "PUCT exploration constant")
    mcts_alpha: float = option(0.5, "weight of outcome reward vs self-evaluation")
    mcts_margin: float = option(0.0, "min Q margin for a pair")
    step_delimiter: str = option("\n", "step delimiter")
    step_max_tokens: int = option(32, "max tokens per step")


@register
class MCTSDPO(Algorithm):
    name = "mcts_dpo"
    Options = MCTSDPOOptions

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        a = self.a
        for key in ("mcts_simulations", "mcts_expand", "mcts_depth", "step_max_tokens"):
            if getattr(a, key) < 1:
                raise ConfigError(f"algorithm.{key}: must be >= 1, got {getattr(a, key)}")
        if not 0.0 <= a.mcts_alpha <= 1.0:
            raise ConfigError(f"algorithm.mcts_alpha: must be in [0, 1], got {a.mcts_alpha}")
        if not a.step_delimiter:
            raise ConfigError("algorithm.step_delimiter: must not be empty")
        longest = cfg.data.max_prompt_len + a.mcts_depth * a.step_max_tokens + 32
        if longest > cfg.rollout.max_model_len:
            raise ConfigError(
                f"rollout.max_model_len: {cfg.rollout.max_model_len} < data.max_prompt_len + "
                f"algorithm.mcts_depth*algorithm.step_max_tokens + 32 = {longest}"
            )
        self.env = StepEnv(delimiter=a.step_delimiter, max_depth=a.mcts_depth)
        self.pairs_total = 0
        self._stats: dict[str, float] = {}

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=1, reference=True, row_multiple=2)

    # -- driver: search → pairs -----------------------------------------------------------------
    def collect(self, exp, prompts: list[dict]) -> Batch:
        a = self.a
        roots = [Node(ids=list(p["prompt_ids"]), tag=i) for i, p in enumerate(prompts)]
        self._judged: list[float] = []
        self._outcomes: list[float] = []
        run_search(
            roots,
            a.mcts_simulations,
            a.mcts_c_puct,
            expand=lambda leaves: self.expand(exp, leaves),
            evaluate=lambda nodes: self.evaluate(exp, prompts, nodes),
        )
        pairs = [p for r in roots for p in extract_pairs(r, a.mcts_margin)]
        relaxed = not pairs and a.mcts_margin > 0
        if relaxed:  # a weak policy may never clear the margin: any distinct sibling Q will do
            pairs = [p for r in roots for p in extract_pairs(r, 0.0)]
        self.pairs_total += len(pairs)
        self._stats = self.search_metrics(roots, pairs, relaxed)
        return self.pair_batch(exp, prompts, pairs, roots)

    def expand(self, exp, leaves: list[Node]) -> list[list[Node]]:
        """One batched generation for every leaf of every tree; vLLM reuses the shared prefixes."""
        a = self.a
        outs = exp.generate_text(
            [leaf.ids for leaf in leaves],
            n=a.mcts_expand,
            max_tokens=a.step_max_tokens,
            stop=[a.step_delimiter],
        )
        return [grow(leaf, samples, self.is_terminal) for leaf, samples in zip(leaves, outs)]

    def is_terminal(self, sample: dict, depth: int) -> bool:
        """Ended by eos (stopped without the delimiter), a final answer, emptiness or depth."""
        text = sample["text"]
        eos = sample.get("finish_reason") == "stop" and not text.endswith(self.a.step_delimiter)
        return self.env.is_terminal(text, depth, eos)

    def evaluate(self, exp, prompts: list[dict], nodes: list[Node]) -> None:
        alpha = self.a.mcts_alpha
        judged = self.self_eval(exp, nodes) if alpha < 1 else [0.0] * len(nodes)
        ends = [n for n in nodes if n.terminal]
        outcome = self.outcome(exp, prompts, ends) if alpha > 0 and ends else {}
        for n, e in zip(nodes, judged):
            n.value = node_value(e, outcome.get(id(n)), n.terminal, alpha)
        self._judged += judged
        self._outcomes += list(outcome.values())

    def self_eval(self, exp, nodes: list[Node]) -> list[float]:
        """p(Yes) / (p(Yes) + p(No)) after the evaluation prompt, from the learner policy."""
        tok = exp.tokenizer
        ask = tok.encode(EVAL_PROMPT, add_special_tokens=False)
        yes, no = (tok.encode(t, add_special_tokens=False) for t in ANSWERS)
        heads = [n.ids + ask for n in nodes for _ in (0, 1)]
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
        batch["group_id"] = [self.step * 100_000 + i // 2 for i in range(len(nodes))]
        batch["policy_version"] = [exp.policy_version] * len(nodes)
        batch["finish_reason"] = [n.finish_reason for n in nodes]
        self._stats["mcts/skipped_update"] = float(skipped)
        return batch

    def search_metrics(self, roots: list[Node], pairs: list[Pair], relaxed: bool) -> dict:
        judged, outs = self._judged, self._outcomes
        stats = {**tree_stats(roots), **pair_stats(pairs, len(roots))}
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

    # -- learner: DPO on the step pairs ---------------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        a, mask = self.a, batch["response_mask"]
        pol, ref = sequence_logp(logp, mask), sequence_logp(batch["ref_logp"], mask)
        real = (mask[0::2].sum(-1) > 0) & (mask[1::2].sum(-1) > 0)  # learner padding: all zero
        keep = real.nonzero().squeeze(-1)
        if keep.numel() == 0:
            return (logp * 0.0).sum(), {"loss/dpo": 0.0}
        pc, pr, rc, rr = pol[0::2][keep], pol[1::2][keep], ref[0::2][keep], ref[1::2][keep]
        losses, m = dpo_loss(pc, pr, rc, rr, a.beta, a.loss_kind, a.label_smoothing)
        loss = losses.sum() / max(counts["num_seqs"] / 2, 1)
        metrics = {"loss/dpo": loss.detach(), **{f"dpo/{k}": v for k, v in m.items()}}
        return loss, as_floats(metrics)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pairs_total": self.pairs_total}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pairs_total = int(state.get("pairs_total", 0))
