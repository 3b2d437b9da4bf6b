"""GRPO (Shao et al. 2024, DeepSeekMath): n samples per prompt, group-normalised advantages,
clipped surrogate, β·KL(π‖π_ref) in the loss (k3 by default)."""

from __future__ import annotations

import torch

from algorithms.base import Algorithm, Needs, as_floats, kl_controller_from, register
from rlpost.batch import Batch
from rlpost.objective import ADVANTAGES, clipped_pg_loss, kl_loss, masked_mean


@register
class GRPO(Algorithm):
    name = "grpo"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.kl = kl_controller_from(cfg)

    def uses_reference(self) -> bool:
        k = self.a.kl
        return k.beta > 0 or k.controller != "fixed" and max(k.start, k.end) > 0

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
        a, mask = self.a, batch["response_mask"]
        pg, m = clipped_pg_loss(
            logp,
            batch["old_logp"],
            batch["advantages"],
            mask,
            a.clip_low,
            a.clip_high,
            a.dual_clip or None,
            a.agg,
            **counts,
        )
        metrics = {
            "loss/policy": pg.detach(),
            "pg/clip_frac": m["clip_frac"],
            "pg/approx_kl": m["approx_kl"],
            "rollout/logprob_diff": masked_mean((logp - batch["old_logp"]).abs().detach(), mask),
        }
        loss = pg
        beta = batch.meta.get("kl_beta", 0.0)
        if "ref_logp" in batch:
            kl, km = kl_loss(
                logp, batch["ref_logp"], mask, beta, a.kl.estimator, a.agg, a.kl.clamp, **counts
            )
            loss = loss + kl
            metrics.update({"loss/kl": kl.detach(), "kl/mean": km["kl"]})
        return loss, as_floats(metrics)

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        super().update(metrics)
        self.kl.update(metrics.get("kl/mean", 0.0), 1)
        return {"kl/beta_next": self.kl.value}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl.load_state_dict(state["kl"])
