"""GRPO (Shao et al. 2024, DeepSeekMath): n samples per prompt, group-normalised advantages,
clipped surrogate, β·KL(π‖π_ref) in the loss (k3 by default).

    A    = ADVANTAGES[algorithm.advantage](...)    group (default; scale=none: Dr.GRPO), rloo,
                                                   reinforce_pp, or gae (then a critic is trained)
    loss = POLICY_LOSSES[algorithm.policy_loss](ρ, A) + β·KL(π‖π_ref)    (kl.placement=in_loss)
"""

from __future__ import annotations

import torch

from algorithms.base import KLRegularized, Needs, as_floats, register
from rlpost.batch import Batch
from rlpost.groups import groups


@register
class GRPO(KLRegularized):
    name = "grpo"

    def needs(self) -> Needs:
        return Needs(
            samples_per_prompt=self.cfg.rollout.n,
            reference=self.uses_reference(),
            critic=self.uses_critic(),
            off_policy=True,  # pg_term applies truncated importance weights to stale samples
        )

    def collect(self, exp, prompts: list[dict]) -> Batch:
        batch = exp.generate(prompts, n=self.needs().samples_per_prompt)
        if not self.a.dynamic_sampling:
            return batch
        # Dynamic sampling (DAPO): a group whose scores are all equal has zero advantage and
        # only dilutes the batch; drop it (no refill: the step trains on fewer rows).
        # The metrics ride in batch.meta: collect may run ahead on the rollout thread.
        metrics = exp.score(batch)
        scores = batch["scores"].tolist()
        by_prompt = groups(batch["group_id"])
        live = [rows for rows in by_prompt.values() if len({scores[i] for i in rows}) > 1]
        metrics["dynamic/kept_group_frac"] = len(live) / max(len(by_prompt), 1)
        batch.meta["collect_metrics"] = metrics
        keep = sorted(i for rows in live for i in rows)
        return batch.select(keep) if keep else batch

    # -- driver: scores → advantages by the configured estimator -----------------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        metrics = self.compute_advantages(batch)
        return {**metrics, **batch.meta.get("collect_metrics", {})}

    # -- learner: surrogate + KL in the loss -------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        pg, metrics = self.pg_term(logp, batch, counts)
        kl, kl_metrics = self.kl_term(logp, batch, counts)
        return pg + kl, as_floats({**metrics, **kl_metrics})
