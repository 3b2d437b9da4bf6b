"""GRPO-D (OThink-MR1, Liu et al. 2025): GRPO whose KL coefficient follows a dynamic schedule.

Small β early lets the policy explore; β grows to β_end later so it consolidates near the
reference. Per step:

    β_s     = schedule(s; kl.start → kl.end, kl.shape, held at kl.start for kl.warmup · steps)
    A_i     = (r_i − mean_g) / (std_g + ε)                    (group advantages, as GRPO)
    loss    = clipped_pg(ρ, A) + β_s · KL_k3(π ‖ π_ref)        (as GRPO, β from the schedule)

Everything except the controller is GRPO's. The reference model is loaded even while β_s = 0,
so the KL is measured (``kl/mean``) from the first step and ready when β starts to grow.
"""

from __future__ import annotations

from dataclasses import replace

from algorithms.base import register
from algorithms.grpo import GRPO
from rlpost.config import ConfigError


@register
class GRPOD(GRPO):
    name = "grpo_d"

    def __init__(self, cfg) -> None:
        k = cfg.algorithm.kl
        if k.controller == "adaptive":
            raise ConfigError(
                "algorithm.kl.controller: grpo_d follows the schedule controller "
                "(kl.start/end/shape/warmup), got adaptive"
            )
        # The schedule is the algorithm: build it whatever kl.controller says (default 'fixed').
        kl = replace(k, controller="schedule")
        super().__init__(replace(cfg, algorithm=replace(cfg.algorithm, kl=kl)))

    def uses_reference(self) -> bool:
        return max(self.a.kl.start, self.a.kl.end) > 0
