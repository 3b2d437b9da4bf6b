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
    from rlpost.objective import kl_controller

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
    with the run, and the policy-side terms most algorithms share."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.kl = kl_controller_from(cfg)

    def uses_reference(self) -> bool:
        """A reference is loaded only when some step has β > 0 (β = 0 is plain policy gradient)."""
        k = self.a.kl
        return k.beta > 0 or k.controller != "fixed" and max(k.start, k.end) > 0

    def observed_kl(self, metrics: dict[str, float]) -> float:
        return metrics.get("kl/mean", 0.0)

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        super().update(metrics)
        self.kl.update(self.observed_kl(metrics), 1)
        return {"kl/beta_next": self.kl.value}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl.load_state_dict(state["kl"])

    def pg_term(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        """Clipped surrogate on ``batch['advantages']`` plus the rollout/learner log-prob gap."""
        from rlpost.objective import clipped_pg_loss, masked_mean

        a, mask, old = self.a, batch["response_mask"], batch["old_logp"]
        pg, m = clipped_pg_loss(
            logp,
            old,
            batch["advantages"],
            mask,
            a.clip_low,
            a.clip_high,
            a.dual_clip or None,
            a.agg,
            **counts,
        )
        return pg, {
            "loss/policy": pg.detach(),
            "pg/clip_frac": m["clip_frac"],
            "pg/approx_kl": m["approx_kl"],
            "rollout/logprob_diff": masked_mean((logp - old).abs().detach(), mask),
        }

    def kl_term(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        """β·KL(π‖π_ref) in the loss (β of this step from ``batch.meta``); 0 without a reference."""
        from rlpost.objective import kl_loss

        if "ref_logp" not in batch:
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
