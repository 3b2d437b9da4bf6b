"""f-DPG (Go et al. 2023): minimise an f-divergence D_f(π_θ ‖ p) to the RLHF target, which is
conditional on the prompt: p(y|x) = P(y|x) / Z(x).

    log P(y|x) = log π_ref(y|x) + r(x, y)/β             (β = algorithm.kl.beta)
    log Ẑ(x)   = logmeanexp over x's samples of (log P(y|x) − log π(y|x))    (IS, y ~ π(·|x))
    log Z(x)   ← per-prompt moving average of Ẑ(x) (momentum algorithm.logz_momentum, on Z)
    t_y        = π(y|x)/p(y|x) = exp(log π(y|x) − log P(y|x) + log Z(x))
    loss       = (1/N) Σ_y sg(f′(t_y) − b(x)) · log π_θ(y|x),  b(x) = mean f′ over x's samples

One batch-wide Z would weigh a hard prompt's samples against an easy prompt's target: every
divergence but reverse KL would then follow the wrong gradient. A group of one has no baseline
of its own: it takes the batch mean of f′ (and its Z from earlier visits of its prompt, if any).

f′ for reverse KL (RL with a KL penalty), forward KL (DPG), total variation and Jensen–Shannon
(the default: the paper's best balance of reward and diversity). The weights and baselines are
computed on the driver from the sampling log-probs (one on-policy step), then sent per row, so
the learner's per-micro-batch sums with global N add up to the batch mean whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, Needs, as_floats, register
from rlpost.batch import Batch
from rlpost.config import ConfigError, option
from rlpost.objective import (
    F_DIVERGENCES,
    PromptLogZTracker,
    f_divergence_weights,
    fdpg_loss,
    group_index,
    group_log_z,
    group_mean,
    prompt_key,
    sequence_logp,
)


def divergence_estimate(
    policy_logp: torch.Tensor,
    target_logp: torch.Tensor,
    log_z: float | torch.Tensor,
    divergence: str,
    clamp: float = 20.0,
) -> float:
    """D_f(π‖p) = E_p[f(t)] = E_{y~π}[f(t_y)/t_y], estimated on the samples."""
    log_t = (policy_logp - target_logp + log_z).clamp(-clamp, clamp)
    return (F_DIVERGENCES.get(divergence).f(log_t) * torch.exp(-log_t)).mean().item()


@dataclass
class FDPGOptions:
    divergence: str = option("js", "f-divergence to the target: forward_kl, reverse_kl, tv, js")
    logz_momentum: float = option(0.9, "moving average of log Z")


@register
class FDPG(Algorithm):
    name = "fdpg"
    Options = FDPGOptions

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if self.a.kl.beta <= 0:
            raise ConfigError(
                f"algorithm.kl.beta: f-DPG's target needs beta > 0, got {self.a.kl.beta}"
            )
        if self.a.divergence not in F_DIVERGENCES:
            raise ConfigError(
                f"algorithm.divergence: unknown {self.a.divergence!r} "
                f"(known: {', '.join(sorted(F_DIVERGENCES))})"
            )
        self.log_z = PromptLogZTracker(self.a.logz_momentum)

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=self.cfg.rollout.n, reference=True)

    # -- driver: target, per-prompt log Z, f′ weights, per-prompt baselines -------------------
    def prepare(self, batch: Batch) -> dict[str, float]:
        a, mask = self.a, batch["response_mask"]
        policy = sequence_logp(batch["old_logp"], mask).double()
        ref = sequence_logp(batch["ref_logp"], mask).double()
        target = ref + batch["scores"].double() / a.kl.beta
        ids = batch["group_id"]
        batch_log_z = group_log_z(policy, target, ids)
        prompts = batch.get("prompt")  # same prompt, same Z: the average spans its visits
        keys = [prompt_key(p) for p in prompts] if prompts else [f"g{g}" for g in ids]
        log_z = self.log_z.update(keys, batch_log_z)
        weights, _ = f_divergence_weights(policy, target, a.divergence, log_z, a.kl.clamp)
        idx, _ = group_index(ids)
        alone = torch.bincount(idx)[idx] == 1
        baseline = torch.where(alone, weights.mean(), group_mean(weights, ids))
        batch["fdpg_weights"] = weights.float()
        batch["fdpg_baseline"] = baseline.float()
        return {
            "reward/mean": batch["scores"].mean().item(),
            "fdpg/log_z": log_z.mean().item(),
            "fdpg/log_z_batch": batch_log_z.mean().item(),
            "fdpg/log_z_spread": (log_z.max() - log_z.min()).item(),
            "fdpg/singleton_groups": float(alone.sum()),
            "fdpg/divergence": divergence_estimate(policy, target, log_z, a.divergence, a.kl.clamp),
            "fdpg/baseline": baseline.mean().item(),
            "fdpg/weight_std": weights.std().item() if len(weights) > 1 else 0.0,
            "kl/seq_mean": (policy - ref).mean().item(),
        }

    # -- learner: sg(f′ − b) · log π(y), divided by the global number of sequences -------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        seq = sequence_logp(logp, batch["response_mask"])
        loss, _ = fdpg_loss(
            seq,
            batch["fdpg_weights"],
            batch["fdpg_baseline"],
            num_seqs=counts["num_seqs"],
        )
        return loss, as_floats({"loss/policy": loss.detach()})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_z": self.log_z.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.log_z.load_state_dict(state["log_z"])
