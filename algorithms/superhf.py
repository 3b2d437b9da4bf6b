"""SuperHF (Mukobi et al. 2023, "Supervised Iterative Learning from Human Feedback"): sample n
completions per prompt from the current policy, keep the best k by reward, and fine-tune on them
with  −(1/Σm)·Σ m_t·logp_t + β·KL(π‖π_ref)  (token level, k3 by default). No advantages, no
clipping: the reward only filters. Logs the paper's reward-hacking signal, the mean METEOR
similarity between completions to different prompts (high = the policy says the same thing to
everyone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import KLRegularized, Needs, as_floats, register
from rlpost.batch import Batch
from rlpost.config import ConfigError, option
from rlpost.groups import groups
from rlpost.metrics import distinct_n, pairwise_meteor
from rlpost.objective import sft_loss

METEOR_PAIRS = 512  # sampled cross-prompt pairs per step: enough for a stable mean, cheap


def top_k_per_group(scores: torch.Tensor, group_ids: list, k: int) -> list[int]:
    """Row indices of the k best-scored rows of each group, in batch order (ties: earlier row)."""
    keep = []
    for rows in groups(group_ids).values():
        rows = sorted(rows, key=lambda i: (-float(scores[i]), i))
        keep += rows[:k]
    return sorted(keep)


def by_group(texts: list[str], group_ids: list) -> list[list[str]]:
    return [[texts[i] for i in rows] for rows in groups(group_ids).values()]


@dataclass
class SuperHFOptions:
    top_k: int = option(1, "completions kept per prompt (the best by reward)")


@register
class SuperHF(KLRegularized):
    name = "superhf"
    Options = SuperHFOptions

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if not 1 <= self.a.top_k <= cfg.rollout.n:
            raise ConfigError(
                f"algorithm.top_k: must be in [1, rollout.n={cfg.rollout.n}], got {self.a.top_k}"
            )
        if self.kl_placement() != "in_loss":
            raise ConfigError(
                "algorithm.kl.placement: superhf has no reward to shape (the reward only "
                f"filters), so its KL is in the loss; got {self.a.kl.placement}"
            )
        self._stats: dict[str, float] = {}

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=self.cfg.rollout.n, reference=self.uses_reference())

    # -- driver: sample n, score, keep the best k per prompt -----------------------------------
    def collect(self, exp, prompts: list[dict]) -> Batch:
        batch = exp.generate(prompts, n=self.cfg.rollout.n)
        metrics = exp.score(batch)
        scores, group_ids = batch["scores"], batch["group_id"]
        keep = top_k_per_group(scores, group_ids, self.a.top_k)
        texts = list(batch["completion"])
        self._stats = {
            **metrics,
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
            "superhf/kept_reward_mean": scores[keep].mean().item(),
            "superhf/meteor_similarity": pairwise_meteor(
                by_group(texts, group_ids), max_pairs=METEOR_PAIRS, seed=self.step
            ),
            "superhf/distinct_2": distinct_n(texts, 2),
        }
        return batch.select(keep)

    def prepare(self, batch: Batch) -> dict[str, float]:
        batch.meta["kl_beta"] = self.kl.value
        return {
            **self._stats,
            **self.observe_kl(batch),  # what an adaptive controller steers by
            "superhf/kept_rows": float(len(batch)),
            "kl/beta": self.kl.value,
        }

    # -- learner: NLL of the kept completions + β·KL to the reference ---------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        a, mask = self.a, batch["response_mask"]
        loss, m = sft_loss(logp, mask, a.agg, **counts)
        metrics = {"loss/sft": loss.detach(), "superhf/nll": m["nll"]}
        kl, kl_metrics = self.kl_term(logp, batch, counts)
        metrics.update(kl_metrics)
        loss = loss + kl
        return loss, as_floats(metrics)
