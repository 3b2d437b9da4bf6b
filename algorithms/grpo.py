"""GRPO (Shao et al. 2024, DeepSeekMath): n samples per prompt, group-normalised advantages,
clipped surrogate, β·KL(π‖π_ref) in the loss (k3 by default)."""

from __future__ import annotations

import torch

from algorithms.base import KLRegularized, Needs, as_floats, register
from rlpost.batch import Batch
from rlpost.objective import ADVANTAGES


@register
class GRPO(KLRegularized):
    name = "grpo"

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=self.cfg.rollout.n, reference=self.uses_reference())

    def collect(self, exp, prompts: list[dict]) -> Batch:
        batch = exp.generate(prompts, n=self.needs().samples_per_prompt)
        if not self.a.dynamic_sampling:
            return batch
        # Dynamic sampling (DAPO): a group whose scores are all equal has zero advantage and
        # only dilutes the batch; drop it (no refill: the step trains on fewer rows).
        self.reward_metrics = exp.score(batch)
        scores, groups = batch["scores"].tolist(), batch["group_id"]
        spread = {g: set() for g in groups}
        for g, r in zip(groups, scores):
            spread[g].add(r)
        keep = [i for i, g in enumerate(groups) if len(spread[g]) > 1]
        self.kept_groups = sum(len(v) > 1 for v in spread.values()) / max(len(spread), 1)
        return batch.select(keep) if keep else batch

    # -- driver: scores → group advantages ---------------------------------------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        scores = batch["scores"]
        if self.a.advantage == "rloo":
            adv = ADVANTAGES.get("rloo")(scores, batch["group_id"])
        else:
            adv = ADVANTAGES.get("group")(scores, batch["group_id"], scale=self.a.scale)
        batch["advantages"] = adv
        batch.meta["kl_beta"] = self.kl.value
        return {
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
            "advantage/abs_mean": adv.abs().mean().item(),
            "kl/beta": self.kl.value,
            **(
                {"dynamic/kept_group_frac": self.kept_groups, **self.reward_metrics}
                if self.a.dynamic_sampling
                else {}
            ),
        }

    # -- learner: surrogate + KL in the loss -------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        pg, metrics = self.pg_term(logp, batch, counts)
        kl, kl_metrics = self.kl_term(logp, batch, counts)
        return pg + kl, as_floats({**metrics, **kl_metrics})
