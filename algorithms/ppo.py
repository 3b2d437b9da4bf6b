"""PPO-RLHF (Ouyang et al. 2022 style): KL to π_ref in the token reward, a critic, GAE (γ=1,
λ=0.95), clipped surrogate + clipped value loss on a separate critic optimizer.

    r_t  = −β·k(π_old, π_ref)_t  (+ score at the last token)     k = algorithm.kl.estimator
    A, R = GAE(r, V) whitened                                   (algorithm.advantage=gae)
    loss = POLICY_LOSSES[algorithm.policy_loss](ρ, A);  critic: ½·max((V − R)², clipped)
    β    ← adaptive (Ziegler et al.): per-sequence KL vs kl.target, n_steps = samples

``algorithm.kl.placement=in_loss`` moves the KL from the reward into the loss (as GRPO).
"""

from __future__ import annotations

import torch

from algorithms.base import KLRegularized, Needs, as_floats, register
from rlpost.batch import Batch


@register
class PPO(KLRegularized):
    name = "ppo"

    def natural_kl_placement(self) -> str:
        return "in_reward"

    def needs(self) -> Needs:
        return Needs(
            samples_per_prompt=self.cfg.rollout.n,
            reference=True,
            critic=self.uses_critic(),
            off_policy=True,  # pg_term applies truncated importance weights to stale samples
        )

    # -- driver: KL-shaped token rewards → GAE ------------------------------------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        return self.compute_advantages(batch)

    # -- learner: policy loss (+ KL when placed in the loss); the critic's is the base's ------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        pg, metrics = self.pg_term(logp, batch, counts)
        kl, kl_metrics = self.kl_term(logp, batch, counts)
        return pg + kl, as_floats({**metrics, **kl_metrics})
