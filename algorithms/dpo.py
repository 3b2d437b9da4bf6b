"""DPO (Rafailov et al. 2023), offline from a preference file or online / iterative.

    offline (algorithm.preference_data set): draw P (prompt, y_w, y_l) triples per step from the
        file (seeded, resumable order); nothing is generated or scored.
    online (preference_data empty): sample n ≥ 2 responses per prompt from the current policy,
        score them, pair best (y_w) vs worst (y_l) per prompt, skipping ties; on-policy pairs
        beat off-policy ones (Tajwar et al. 2024).
    h    = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]   (sequence log-probs)
    loss = mean over pairs of ℓ(h): −log σ(βh) (cDPO with label smoothing ε), IPO or hinge

Rows are adjacent pairs: row 2i chosen, row 2i+1 rejected (``row_multiple=2`` keeps a pair on one
rank and micro-batch). A pair whose rows carry no response mask is learner padding: zero loss.
"""

from __future__ import annotations

from typing import Any

import torch

from algorithms.base import Algorithm, Needs, as_floats, register
from rlpost.batch import Batch, build_sequences
from rlpost.config import ConfigError
from rlpost.data import PromptSampler, load_preferences
from rlpost.groups import group_ids_for, groups
from rlpost.objective import dpo_pair_loss, real_pairs


def best_worst_pairs(scores: list[float], group_ids: list[Any]) -> list[tuple[int, int]]:
    """(best, worst) row per group in first-seen order; a group whose scores all tie gives none.

    The first row wins a tie for best and for worst, so the choice is deterministic.
    """
    pairs = []
    for rows in groups(group_ids).values():
        best = max(rows, key=lambda i: scores[i])
        worst = min(rows, key=lambda i: scores[i])
        if scores[best] > scores[worst]:
            pairs.append((best, worst))
    return pairs


@register
class DPO(Algorithm):
    name = "dpo"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.offline = bool(self.a.preference_data)
        if not self.offline and cfg.rollout.n < 2:
            raise ConfigError(
                f"rollout.n: online DPO pairs samples of the same prompt, needs >= 2, "
                f"got {cfg.rollout.n} (or set algorithm.preference_data for offline DPO)"
            )
        self.triples = None  # offline: PromptSampler over the preference rows, made on first use
        self.triples_state: dict | None = None
        self.collected: dict[str, float] = {}

    def needs(self) -> Needs:
        if self.offline:  # nothing to generate or score: engines only for in-loop evaluation
            rollout = bool(self.cfg.trainer.eval_every)
            return Needs(2, reference=True, row_multiple=2, reward=False, rollout=rollout)
        return Needs(self.cfg.rollout.n, reference=True, row_multiple=2)

    # -- driver: pairs ------------------------------------------------------------------------
    def collect(self, exp, prompts: list[dict]) -> Batch:
        return (
            self.collect_offline(exp, len(prompts))
            if self.offline
            else self.collect_online(exp, prompts)
        )

    def collect_offline(self, exp, count: int) -> Batch:
        """``count`` triples from the file (the sampled prompts only set how many)."""
        if self.triples is None:
            rows = load_preferences(self.a.preference_data, exp.tokenizer, self.cfg)
            self.triples = PromptSampler(rows, self.cfg.trainer.seed, self.cfg.data.shuffle)
            if self.triples_state is not None:
                self.triples.load_state_dict(self.triples_state)
        rows = self.triples.next(count)
        pad = exp.tokenizer.pad_token_id or 0
        batch = build_sequences(
            [r["prompt_ids"] for r in rows for _ in range(2)],
            [ids for r in rows for ids in (r["chosen_ids"], r["rejected_ids"])],
            pad_id=pad,
        )
        batch["prompt"] = [r["prompt"] for r in rows for _ in range(2)]
        batch["completion"] = [c for r in rows for c in (r["chosen"], r["rejected"])]
        batch["group_id"] = group_ids_for(exp.step, count, 2)
        batch["scores"] = torch.tensor([1.0, 0.0] * count)  # the labels: nothing to score
        self.collected = {}
        return batch

    def collect_online(self, exp, prompts: list[dict]) -> Batch:
        """n samples per prompt from the current policy → scored → best vs worst per prompt."""
        batch = exp.generate(prompts, n=self.cfg.rollout.n)
        metrics = dict(exp.score(batch))
        if not len(batch):
            raise RuntimeError("online DPO: the reward group dropped every sample of this step")
        scores = batch["scores"]
        pairs = best_worst_pairs(scores.tolist(), batch["group_id"])
        metrics.update(
            {
                "reward/mean": scores.mean().item(),
                "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
                "dpo/tied_groups": float(len(set(batch["group_id"])) - len(pairs)),
            }
        )
        self.collected = metrics
        if not pairs:  # every group tied: one masked pair keeps the step going, trains nothing
            out = batch.select([0, min(1, len(batch) - 1)])
            out["response_mask"] = torch.zeros_like(out["response_mask"])
            return out
        return batch.select([i for pair in pairs for i in pair])

    def prepare(self, batch: Batch) -> dict[str, float]:
        real = real_pairs(batch["response_mask"])
        scores = batch["scores"]
        metrics = {"dpo/pairs": float(real.sum()), **self.collected}
        if real.any() and not self.offline:
            metrics["reward/chosen_mean"] = scores[0::2][real].mean().item()
            metrics["reward/pair_gap"] = (scores[0::2] - scores[1::2])[real].mean().item()
        return metrics

    # -- learner: preference loss over real pairs ---------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        a = self.a
        # Summed over micro-batches and ranks, Σ losses / global pairs is the mini-batch mean.
        loss, m = dpo_pair_loss(
            logp,
            batch["ref_logp"],
            batch["response_mask"],
            a.beta,
            a.loss_kind,
            a.label_smoothing,
            num_pairs=counts["num_seqs"] / 2,
        )
        metrics = {f"dpo/{k}": v for k, v in m.items() if k != "pairs"}
        return loss, as_floats({"loss/dpo": loss.detach(), **metrics})

    def state_dict(self) -> dict:
        pos = self.triples.state_dict() if self.triples is not None else self.triples_state
        return {**super().state_dict(), "triples": pos}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.triples_state = state.get("triples")
        if self.triples is not None and self.triples_state is not None:
            self.triples.load_state_dict(self.triples_state)
