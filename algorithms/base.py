"""The protocol every algorithm follows, and the registry they live in.

An algorithm says three things:
  * ``needs``: which experience the actors must produce (samples per prompt, reference / teacher
    log-probs, critic values, rows that must stay together such as DPO pairs);
  * ``collect`` + ``prepare`` (driver side): how prompts become a training batch, and how scores
    become advantages or weights;
  * ``loss`` (learner side): which objective-layer terms it combines, on one micro-batch.

The trainer (rlpost/trainer.py) calls them in that order; the learner actors build their own
instance from the same config and call ``loss``. Per-step scalars the learner needs (e.g. the
current KL coefficient) travel in ``batch.meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from rlpost.batch import Batch
from rlpost.config import ConfigError
from rlpost.objective import (
    ADVANTAGES,
    POLICY_LOSSES,
    AdvantageConfig,
    PolicyLossConfig,
    advantage_needs_values,
    kl_controller,
    kl_estimate,
    kl_loss,
    kl_penalty_in_reward,
    masked_mean,
    policy_loss,
    score_at_last_token,
    sequence_kl,
    truncated_is_weights,
    value_loss,
)
from rlpost.registry import Registry, absolute_spec

if TYPE_CHECKING:
    from rlpost.config import Config


@dataclass
class Needs:
    samples_per_prompt: int = 1
    reference: bool = False
    teacher: bool = False
    critic: bool = False
    row_multiple: int = 1  # rows that must land on the same rank and micro-batch (DPO pairs: 2)
    reward: bool = True  # offline preference learning scores nothing
    rollout: bool = True  # False: no vLLM engines, no weight sync (SFT from a data set)
    off_policy: bool = False  # the loss corrects stale samples: generation may run ahead


class Experience(Protocol):
    """What the trainer offers an algorithm's ``collect`` (backed by the Ray actor groups)."""

    tokenizer: Any
    policy_version: int

    def generate(self, prompts: list[dict], n: int, **sampling: Any) -> Batch:
        """n samples per prompt → Batch (input_ids, attention_mask, response_mask, old_logp;
        columns prompt, completion, group_id, policy_version, finish_reason + data columns)."""

    def generate_text(
        self, prompt_ids: list[list[int]], n: int, max_tokens: int, stop: list[str] | None = None
    ) -> list[list[dict]]:
        """Raw continuations of token prompts: per prompt, n dicts {token_ids, text, logprobs,
        cumulative_logprob, finish_reason}. Used by tree search; prefixes share vLLM's cache."""

    def score(self, batch: Batch) -> dict[str, float]:
        """Fill batch['scores'] ([B] float) from the reward group; returns reward metrics.
        Rows whose reward was dropped by policy are removed from the batch in place."""

    def ref_logp(self, batch: Batch) -> torch.Tensor:
        """Frozen reference log-probs aligned with input_ids ([B, L])."""

    def teacher_logp(self, batch: Batch) -> torch.Tensor: ...

    def policy_logp(self, batch: Batch) -> torch.Tensor:
        """Current learner policy log-probs without grad (e.g. for self-evaluation)."""


@dataclass
class NoOptions:
    """An algorithm that only uses the shared ``algorithm.*`` keys."""


class Algorithm:
    """Base class; subclasses override what differs. Defaults give on-policy sampling + scoring.

    ``Options``: a dataclass of the algorithm's own knobs (each field with a ``help`` in its
    metadata), set as ``algorithm.<field>`` and read as ``cfg.algorithm.<field>``; the config
    types and checks them before any actor starts, and docs/configuration.md lists them.
    """

    name: ClassVar[str] = "base"
    Options: ClassVar[type] = NoOptions

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Cross-field checks, run while the config loads, before any actor starts. Building the
        algorithm is the check: constructors raise ``ConfigError`` naming the key (cheap: no
        models are loaded here)."""
        cls(cfg)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.a = cfg.algorithm
        self.step = 0

    # -- driver side -------------------------------------------------------------------------
    def needs(self) -> Needs:
        return Needs(samples_per_prompt=self.cfg.rollout.n)

    def collect(self, exp: Experience, prompts: list[dict]) -> Batch:
        batch = exp.generate(prompts, n=self.needs().samples_per_prompt)
        return batch

    def prepare(self, batch: Batch) -> dict[str, float]:
        """Turn scores (and ref/teacher/values) into what ``loss`` reads. Returns metrics."""
        return {}

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        """After an optimizer step (KL controllers etc.). Returns metrics to log."""
        self.step += 1
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state.get("step", 0)

    # -- learner side ------------------------------------------------------------------------
    def loss(
        self, logp: torch.Tensor, batch: Batch, counts: dict[str, int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch. ``logp`` [B, L] aligned with input_ids (with grad);
        ``counts`` = global num_tokens / num_seqs / max_len of the mini-batch, for aggregation.
        Losses of all micro-batches on all ranks are summed to make the mini-batch gradient."""
        raise NotImplementedError

    def critic_loss(
        self, values: torch.Tensor, batch: Batch, counts: dict[str, int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError(f"{self.name} trains no critic")


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


def register(cls: type[Algorithm]) -> type[Algorithm]:
    ALGORITHMS.add(cls.name, cls)
    return cls


def algorithm_class(spec: str) -> type[Algorithm]:
    """Registry name or ``file.py:Class``; importing ``algorithms`` registers the built-ins."""
    import algorithms  # noqa: F401  (registers the built-ins; the package imports this module)

    cls = ALGORITHMS.get(absolute_spec(spec) if ":" in spec else spec)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"{spec}: {cls!r} is not an rlpost Algorithm subclass")
    return cls


def build_algorithm(cfg: Config) -> Algorithm:
    return algorithm_class(cfg.algorithm.name)(cfg)


def kl_controller_from(cfg: Config):
    """The KL controller named by ``algorithm.kl`` (the math lives in rlpost.objective)."""
    k = cfg.algorithm.kl
    if k.controller == "adaptive":
        return kl_controller("adaptive", init=k.beta, target=k.target, horizon=k.horizon)
    if k.controller == "schedule":
        return kl_controller(
            "schedule",
            start=k.start,
            end=k.end,
            total_steps=cfg.trainer.steps,
            shape=k.shape,
            warmup=k.warmup,
        )
    return kl_controller("fixed", beta=k.beta)


def as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


class KLRegularized(Algorithm):
    """An algorithm with a KL coefficient from ``algorithm.kl`` whose controller state is resumed
    with the run, and the policy-gradient pieces most algorithms share: advantages by the
    registry name ``algorithm.advantage``, the policy loss ``algorithm.policy_loss``, the KL
    in the reward or in the loss (``algorithm.kl.placement``), and the critic when the estimator
    reads values."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.kl = kl_controller_from(cfg)
        self._observed: tuple[float, int] | None = None  # (mean per-sequence KL, samples)
        for key, reg, name in (
            ("algorithm.advantage", ADVANTAGES, getattr(self.a, "advantage", "group")),
            ("algorithm.policy_loss", POLICY_LOSSES, self.policy_loss_name()),
        ):
            try:
                reg.get(name)
            except (KeyError, ValueError, FileNotFoundError, AttributeError) as err:
                raise ConfigError(f"{key}: {err.args[0] if err.args else err}") from None
        if self.kl_placement() not in ("in_loss", "in_reward"):
            raise ConfigError(
                f"algorithm.kl.placement: {self.a.kl.placement!r} is not one of "
                "'auto', 'in_loss', 'in_reward'"
            )

    # -- configuration read in one place ------------------------------------------------------
    def natural_kl_placement(self) -> str:
        """Where the KL goes when ``algorithm.kl.placement`` is 'auto' (PPO: in the reward)."""
        return "in_loss"

    def kl_placement(self) -> str:
        p = self.a.kl.placement
        return self.natural_kl_placement() if p == "auto" else p

    def policy_loss_name(self) -> str:
        return getattr(self.a, "policy_loss", "clipped")

    def advantage_config(self) -> AdvantageConfig:
        a = self.a
        return AdvantageConfig(gamma=a.gamma, lam=a.lam, scale=a.scale)

    def uses_critic(self) -> bool:
        """A critic is trained exactly when the configured estimator reads values (gae)."""
        return advantage_needs_values(self.a.advantage)

    def uses_reference(self) -> bool:
        """A reference is loaded only when some step has β > 0 (β = 0 is plain policy gradient)."""
        k = self.a.kl
        return k.beta > 0 or k.controller != "fixed" and max(k.start, k.end) > 0

    # -- driver side --------------------------------------------------------------------------
    def observe_kl(self, batch: Batch) -> dict[str, float]:
        """Measure KL(π_old‖π_ref) per sequence (summed over tokens, the configured estimator)
        for the controller, which ``update`` feeds with the batch's sample count."""
        if "ref_logp" not in batch:
            return {}
        k = self.a.kl
        seq = sequence_kl(
            batch["old_logp"], batch["ref_logp"], batch["response_mask"], k.estimator, k.clamp
        )
        self._observed = (seq.mean().item() if len(seq) else 0.0, len(seq))
        return {"kl/seq_mean": self._observed[0]}

    def compute_advantages(self, batch: Batch) -> dict[str, float]:
        """Scores (KL-shaped when the KL is in the reward) → ``batch['advantages']`` [B, T] by
        the estimator named ``algorithm.advantage``; critic targets too when there are values."""
        k, mask = self.a.kl, batch["response_mask"]
        scores = batch["scores"].float()
        beta = self.kl.value
        metrics = self.observe_kl(batch)
        in_reward = self.kl_placement() == "in_reward" and "ref_logp" in batch
        if in_reward:
            old, ref = batch["old_logp"], batch["ref_logp"]
            token_rewards = kl_penalty_in_reward(scores, old, ref, mask, beta, k.estimator, k.clamp)
            shaped = scores - beta * sequence_kl(old, ref, mask, k.estimator, k.clamp)
            metrics["kl/mean"] = masked_mean(kl_estimate(old, ref, k.estimator, k.clamp), mask)
        else:
            token_rewards, shaped = score_at_last_token(scores, mask), scores
        values = batch.get("values")
        estimator = ADVANTAGES.get(self.a.advantage)
        adv, returns = estimator(
            shaped, token_rewards, values, mask, batch.get("group_id"), self.advantage_config()
        )
        batch["advantages"] = adv.float()
        if values is not None:
            batch["returns"] = returns.float()
            batch["old_values"] = values
            metrics["critic/values_mean"] = masked_mean(values, mask)
            metrics["critic/returns_mean"] = masked_mean(returns, mask)
        batch.meta["kl_beta"] = beta
        return as_floats(
            {
                **metrics,
                "reward/mean": scores.mean(),
                "reward/std": scores.std() if len(scores) > 1 else 0.0,
                "advantage/abs_mean": masked_mean(adv.abs(), mask),
                "kl/beta": beta,
            }
        )

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Step the controller: the adaptive one by the batch's samples and its per-sequence KL
        (Ziegler et al.); step-counted ones (fixed, schedule) by one optimizer step."""
        super().update(metrics)
        if getattr(self.kl, "unit", "steps") == "samples":
            if self._observed is not None:  # no KL measured this step: nothing to steer by
                self.kl.update(*self._observed)
        else:
            self.kl.update(self._observed[0] if self._observed else None, 1)
        self._observed = None
        return {"kl/beta_next": self.kl.value}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl.load_state_dict(state["kl"])

    # -- learner side -------------------------------------------------------------------------
    def pg_term(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        """The policy loss named ``algorithm.policy_loss`` (default the clipped surrogate) on
        ``batch['advantages']``, plus the rollout/learner log-prob gap."""
        a, mask, old, adv = self.a, batch["response_mask"], batch["old_logp"], batch["advantages"]
        if batch.meta.get("old_logp_from_forward"):  # one optimizer step: this forward is π_old
            old = logp.detach()
        out: dict[str, Any] = {}
        behaviour = batch.get("behav_logp")  # set when the samples were generated ahead
        if behaviour is not None:  # A ← min(π_old/π_rollout, C)·A: the surrogate times the weight
            w, m = truncated_is_weights(old, behaviour, mask, a.is_cap)
            adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv) * w
            out = {
                "rollout/is_weight_mean": m["is_weight_mean"],
                "rollout/is_clip_frac": m["is_clip_frac"],
            }
        cfg = PolicyLossConfig(a.clip_low, a.clip_high, a.dual_clip or None, a.agg)
        pg, m = policy_loss(self.policy_loss_name(), logp, old, adv, mask, cfg, counts)
        sampled = old if behaviour is None else behaviour  # what the engine's log-probs were
        out.update(
            {
                "loss/policy": pg.detach(),
                "pg/clip_frac": m["clip_frac"],
                "pg/approx_kl": m["approx_kl"],
                "rollout/logprob_diff": masked_mean((logp - sampled).abs().detach(), mask),
            }
        )
        if "dual_clip_frac" in m:
            out["pg/dual_clip_frac"] = m["dual_clip_frac"]
        return pg, out

    def kl_term(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        """β·KL(π‖π_ref) in the loss (β of this step from ``batch.meta``); 0 without a reference
        or when the KL is placed in the reward instead."""
        if "ref_logp" not in batch or self.kl_placement() != "in_loss":
            return torch.zeros((), device=logp.device), {}
        k = self.a.kl
        kl, m = kl_loss(
            logp,
            batch["ref_logp"],
            batch["response_mask"],
            batch.meta.get("kl_beta", 0.0),
            k.estimator,
            self.a.agg,
            k.clamp,
            **counts,
        )
        return kl, {"loss/kl": kl.detach(), "kl/mean": m["kl"]}

    def critic_loss(self, values: torch.Tensor, batch: Batch, counts: dict):
        """PPO's clipped value loss on the estimator's returns, weighted by ``value_coef``."""
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
