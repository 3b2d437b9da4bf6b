"""The shared KL-regularised objective layer (pure torch).

Every algorithm reduces a divergence to p*(y|x) ∝ π_ref(y|x)·exp(r(x, y)/β), or to a teacher;
this package holds the pieces they combine. See docs/objective.md.
"""

from rlpost.objective.advantages import (
    ADVANTAGES,
    broadcast_to_tokens,
    discounted_returns,
    gae,
    group_advantages,
    masked_moments,
    register_advantage,
    reinforce_pp_advantages,
    rloo_advantages,
    whiten,
)
from rlpost.objective.aggregate import (
    AGGREGATIONS,
    aggregate,
    global_counts,
    masked_mean,
    safe_div,
)
from rlpost.objective.dpo import PREFERENCE_LOSSES, dpo_loss, register_preference_loss
from rlpost.objective.fdiv import (
    F_DIVERGENCES,
    FDivergence,
    LogZTracker,
    f_divergence_weights,
    fdpg_loss,
    log_mean_exp,
    register_divergence,
)
from rlpost.objective.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKL,
    FixedKL,
    KLController,
    ScheduleKL,
    exact_kl,
    kl_controller,
    kl_estimate,
    kl_loss,
    kl_penalty_in_reward,
    last_token_index,
    register_kl_estimator,
)
from rlpost.objective.losses import (
    clipped_pg_loss,
    kd_loss,
    sequence_logp,
    sft_loss,
    value_loss,
)
from rlpost.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "F_DIVERGENCES",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "PREFERENCE_LOSSES",
    "AdaptiveKL",
    "FDivergence",
    "FixedKL",
    "KLController",
    "LogZTracker",
    "Registry",
    "ScheduleKL",
    "aggregate",
    "broadcast_to_tokens",
    "clipped_pg_loss",
    "discounted_returns",
    "dpo_loss",
    "exact_kl",
    "f_divergence_weights",
    "fdpg_loss",
    "gae",
    "global_counts",
    "group_advantages",
    "kd_loss",
    "kl_controller",
    "kl_estimate",
    "kl_loss",
    "kl_penalty_in_reward",
    "last_token_index",
    "log_mean_exp",
    "masked_mean",
    "masked_moments",
    "register_advantage",
    "register_divergence",
    "register_kl_estimator",
    "register_preference_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "safe_div",
    "sequence_logp",
    "sft_loss",
    "value_loss",
    "whiten",
]
