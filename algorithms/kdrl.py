"""KDRL (Xu et al. 2025): GRPO plus knowledge distillation from a teacher on the student's samples.

    J = J_GRPO − β_s · KL(π_θ ‖ π_T)      reverse KL, token level, on the student's own samples
    β_s  = schedule(s; kd_beta_start → kd_beta_end, kd_shape)      annealed 5e-3 → 1e-3
    mask = response_mask · [r < kd_mask_threshold]                 reward-guided masking
    loss = clipped_pg(ρ, A) [+ kl.beta · KL_k3(π ‖ π_ref)] + β_s · agg(k2(π, π_T) · mask)

The KD term uses its own knobs (``algorithm.kd_*``) so ``algorithm.kl.*`` keeps meaning the
reference KL exactly as in GRPO (set ``kl.beta=0`` to drop the reference model, as the recipes
do). Masked responses count in the denominator with a zero KD term, so masking removes their
pull towards the teacher without re-weighting the others. Teacher log-probs come from the
TeacherGroup on the student's tokens; the trainer refuses a teacher whose tokenizer differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from algorithms.base import Needs, as_floats, register
from algorithms.grpo import GRPO
from rlpost.batch import Batch
from rlpost.config import ConfigError, option
from rlpost.objective import kd_loss, kl_controller


def kd_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B] 1.0 where the KD term applies: reward-guided masking drops rows whose reward is
    already ≥ threshold; threshold < 0 turns masking off."""
    if threshold < 0:
        return torch.ones_like(scores, dtype=torch.float32)
    return (scores < threshold).to(torch.float32)


@dataclass
class KDRLOptions:
    kd_mask_threshold: float = option(-1.0, "no KD term when reward >= threshold; <0 = off")
    kd_beta_start: float = option(5e-3, "teacher-KL coefficient at the first step")
    kd_beta_end: float = option(1e-3, "teacher-KL coefficient at the last step (annealed)")
    kd_shape: Literal["linear", "cosine", "step"] = option("linear", "teacher-beta annealing")
    kd_estimator: Literal["k1", "k2", "k3"] = option("k2", "estimator of KL(student||teacher)")


@register
class KDRL(GRPO):
    name = "kdrl"
    Options = KDRLOptions

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if not cfg.teacher.path:
            raise ConfigError("teacher.path: kdrl needs a teacher model")
        a = self.a
        self.kd_beta = kl_controller(
            "schedule",
            start=a.kd_beta_start,
            end=a.kd_beta_end,
            total_steps=cfg.trainer.steps,
            shape=a.kd_shape,
            warmup=0.0,
        )

    def needs(self) -> Needs:
        return Needs(
            samples_per_prompt=self.cfg.rollout.n,
            reference=self.uses_reference(),
            teacher=True,
            critic=self.uses_critic(),
        )

    # -- driver: GRPO advantages + the KD mask and β ------------------------------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        metrics = super().prepare(batch)
        keep = kd_keep(batch["scores"], self.a.kd_mask_threshold)
        batch["kd_keep"] = keep  # per row, so learner padding (mask zeroed) stays KD-free too
        batch.meta["kd_beta"] = self.kd_beta.value
        return {
            **metrics,
            "kd/beta": self.kd_beta.value,
            "kd/masked_frac": 1.0 - keep.mean().item(),
        }

    # -- learner: GRPO loss + β·KL(π‖π_T) -----------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        loss, metrics = super().loss(logp, batch, counts)
        a = self.a
        kd, m = kd_loss(
            logp,
            batch["teacher_logp"],
            batch["response_mask"] * batch["kd_keep"].unsqueeze(-1).to(logp.dtype),
            a.kd_estimator,
            a.agg,
            beta=batch.meta.get("kd_beta", self.kd_beta.value),
            clamp=a.kl.clamp,
            **counts,
        )
        return loss + kd, {**metrics, **as_floats({"loss/kd": kd.detach(), "kd/kl": m["kd_kl"]})}

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        out = super().update(metrics)
        self.kd_beta.update(None, 1)
        return {**out, "kd/beta_next": self.kd_beta.value}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kd_beta": self.kd_beta.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kd_beta.load_state_dict(state["kd_beta"])
