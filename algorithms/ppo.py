"""PPO-RLHF (Ouyang et al. 2022 style): KL to π_ref in the token reward, a critic, GAE (γ=1,
λ=0.95), clipped surrogate + clipped value loss on a separate critic optimizer."""

from __future__ import annotations

import torch

from algorithms.base import KLRegularized, Needs, as_floats, register
from rlpost.batch import Batch
from rlpost.config import ConfigError
from rlpost.objective import (
    gae,
    kl_estimate,
    kl_penalty_in_reward,
    masked_mean,
    value_loss,
    whiten,
)


@register
class PPO(KLRegularized):
    name = "ppo"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if self.a.advantage != "gae":
            raise ConfigError("algorithm.advantage: ppo needs gae (it trains a critic)")

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=self.cfg.rollout.n, reference=True, critic=True)

    # -- driver: KL-shaped token rewards → GAE ------------------------------------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        mask, old, ref = batch["response_mask"], batch["old_logp"], batch["ref_logp"]
        rewards = kl_penalty_in_reward(
            batch["scores"], old, ref, mask, self.kl.value, "k1", self.a.kl.clamp
        )
        adv, returns = gae(rewards, batch["values"], mask, self.a.gamma, self.a.lam)
        batch["advantages"] = whiten(adv, mask)
        batch["returns"] = returns
        batch["old_values"] = batch["values"]
        self.observed_kl_value = masked_mean(kl_estimate(old, ref, "k1"), mask).item()
        return {
            "reward/mean": batch["scores"].mean().item(),
            "kl/mean": self.observed_kl_value,
            "kl/beta": self.kl.value,
            "critic/values_mean": masked_mean(batch["values"], mask).item(),
            "critic/returns_mean": masked_mean(returns, mask).item(),
        }

    # -- learner: policy and critic losses ----------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        pg, metrics = self.pg_term(logp, batch, counts)
        return pg, as_floats(metrics)

    def critic_loss(self, values: torch.Tensor, batch: Batch, counts: dict):
        vl, m = value_loss(
            values,
            batch["old_values"],
            batch["returns"],
            batch["response_mask"],
            self.cfg.critic.value_clip,
            self.a.agg,
            **counts,
        )
        loss = self.a.value_coef * vl
        return loss, as_floats(
            {"loss/value": loss.detach(), **{f"critic/{k}": v for k, v in m.items()}}
        )

    def observed_kl(self, metrics: dict[str, float]) -> float:
        return getattr(self, "observed_kl_value", 0.0)
