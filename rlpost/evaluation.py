"""Evaluation of a policy on held-out prompts, shared by the trainer's in-loop ``eval/*`` metrics
and `rlpost eval` (rlpost/commands/evaluate.py), so a baseline measured by one sits on the same
curve as the other:

* a **greedy** pass (one completion per prompt, temperature 0) gives ``accuracy`` (the task's
  verifier), ``reward_mean`` (the configured reward) and ``length_mean``;
* a **sampled** pass (n completions per prompt at the sampling temperature, fixed per-prompt
  seeds) gives ``accuracy_sampled``, ``pass@k`` (unbiased estimator), ``kl`` to the reference,
  and diversity: ``diversity`` (fraction of distinct completions per prompt, 0 = collapsed),
  distinct-n, and METEOR similarity within and across prompts.

KL(π‖π_ref) per completion is estimated on the samples with Σ_t k3 (non-negative, unbiased for the
sequence KL; ``kl_k1`` is the plain log-ratio sum). The policy's log-probs are the sampling
log-probs vLLM returns; the reference's come from the reference model on the same tokens, both at
the sampling temperature, as in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envs.base import get_task
from envs.verify import numeric_match
from rlpost.batch import Batch, build_sequences
from rlpost.data import load_prompts
from rlpost.metrics import distinct_n, meteor, pairwise_meteor
from rlpost.objective import kl_estimate

IN_LOOP_SAMPLES = 4  # completions per prompt in the trainer's sampled eval pass
RewardFn = Callable[[list[str], list[str], dict[str, list]], list[float | None]]


# ----------------------------------------------------------------------------- pure metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def unique_fraction(groups: Sequence[Sequence[str]]) -> float:
    """Mean over prompts of (distinct completions − 1) / (n − 1): 0 when every sample of a prompt
    is the same (mode collapse), 1 when all differ. Prompts with fewer than 2 samples are skipped."""
    vals = [(len(set(g)) - 1) / (len(g) - 1) for g in groups if len(g) > 1]
    return sum(vals) / len(vals) if vals else 0.0


def self_meteor(groups: Sequence[Sequence[str]]) -> float:
    """Mean METEOR between different samples of the same prompt (high = samples alike)."""
    vals = []
    for g in groups:
        pairs = [(a, b) for a in range(len(g)) for b in range(len(g)) if a != b]
        if pairs:
            vals.append(sum(meteor(g[a], g[b]) for a, b in pairs) / len(pairs))
    return sum(vals) / len(vals) if vals else 0.0


def diversity_metrics(
    groups: Sequence[Sequence[str]], cross: bool = True, max_pairs: int = 2000
) -> dict[str, float]:
    """Diversity of sampled completions, grouped by prompt (see module docstring); ``cross``
    adds METEOR across prompts (a seeded sample of ``max_pairs`` pairs)."""
    flat = [t for g in groups for t in g]
    out = {
        "diversity": unique_fraction(groups),
        "distinct_1": distinct_n(flat, 1),
        "distinct_2": distinct_n(flat, 2),
        "self_meteor": self_meteor(groups),
    }
    if cross:
        out["cross_meteor"] = pairwise_meteor(groups, max_pairs=max_pairs)
    return out


def kl_metrics(logp: Any, ref_logp: Any, mask: Any) -> dict[str, float]:
    """KL(π‖ref) estimates from per-token log-probs of samples of π ([B, L] aligned, mask on the
    response): per-sequence Σ k3 (``kl``), Σ k1 (``kl_k1``), and k3 per token (``kl_token``)."""
    mask = mask.float()
    k3 = kl_estimate(logp, ref_logp, "k3") * mask
    k1 = kl_estimate(logp, ref_logp, "k1") * mask
    rows = max(int(mask.shape[0]), 1)
    return {
        "kl": float(k3.sum()) / rows,
        "kl_k1": float(k1.sum()) / rows,
        "kl_token": float(k3.sum()) / max(float(mask.sum()), 1.0),
    }


@dataclass
class Scored:
    """Completions of one pass, grouped per prompt, with their rewards and correctness."""

    texts: list[list[str]]
    lengths: list[list[int]]
    rewards: list[list[float | None]]
    correct: list[list[bool]] | None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(
    greedy: Scored | None, sampled: Scored | None, ks: Sequence[int] = (), cross: bool = True
) -> dict[str, float]:
    """The metric dict of one evaluation (keys documented in the module docstring)."""
    out: dict[str, float] = {}
    if greedy is not None:
        out["reward_mean"] = _mean([r for g in greedy.rewards for r in g if r is not None])
        out["length_mean"] = _mean([float(x) for g in greedy.lengths for x in g])
        if greedy.correct is not None:
            out["accuracy"] = _mean([float(c) for g in greedy.correct for c in g])
    if sampled is not None:
        out["reward_sampled"] = _mean([r for g in sampled.rewards for r in g if r is not None])
        out["length_sampled"] = _mean([float(x) for g in sampled.lengths for x in g])
        if sampled.correct is not None:
            out["accuracy_sampled"] = _mean([float(c) for g in sampled.correct for c in g])
            for k in ks:
                vals = [pass_at_k(len(g), sum(g), k) for g in sampled.correct if 1 <= k <= len(g)]
                if vals:
                    out[f"pass@{k}"] = _mean(vals)
        out.update(diversity_metrics(sampled.texts, cross=cross))
        if greedy is None:
            out.setdefault("reward_mean", out["reward_sampled"])
            out.setdefault("length_mean", out["length_sampled"])
            if "accuracy_sampled" in out:
                out["accuracy"] = out["accuracy_sampled"]
    return out


# ----------------------------------------------------------------------------- verifiers
def correctness_fn(
    data_spec: str, rows: list[dict]
) -> Callable[[list[dict], list[str]], list[bool]] | None:
    """Correct/incorrect per (row, completion): the task's verifier for ``task:NAME`` (full
    credit only), else a numeric match against the rows' ``answer``; None when the rows have no
    answers (accuracy is then not reported)."""
    if data_spec.startswith("task:"):
        task = get_task(data_spec.removeprefix("task:"))

        def by_task(rows: list[dict], texts: list[str]) -> list[bool]:
            cols = _columns(rows)
            scores = task.reward([r["prompt"] for r in rows], texts, **cols)
            return [s >= 1.0 - 1e-6 for s in scores]

        return by_task

    if not any(r.get("answer") not in (None, "") for r in rows):
        return None

    def by_answer(rows: list[dict], texts: list[str]) -> list[bool]:
        out = []
        for r, t in zip(rows, texts):
            try:
                out.append(bool(numeric_match(t, r.get("answer"))))
            except ValueError:
                out.append(False)
        return out

    return by_answer


def _columns(rows: list[dict]) -> dict[str, list]:
    """Per-row data fields for reward functions (prompt text and token ids excluded)."""
    keys = [k for k in (rows[0] if rows else {}) if k not in ("prompt", "prompt_ids")]
    return {k: [r.get(k) for r in rows] for k in keys}


def score_pass(
    rows: list[dict],
    samples: list[list[dict]],
    reward_fn: RewardFn,
    correct_fn: Callable[[list[dict], list[str]], list[bool]] | None,
) -> Scored:
    """Rewards and correctness of per-prompt sample dicts ({text, token_ids})."""
    flat_rows = [r for r, g in zip(rows, samples) for _ in g]
    texts = [s["text"] for g in samples for s in g]
    rewards = reward_fn([r["prompt"] for r in flat_rows], texts, _columns(flat_rows))
    correct = correct_fn(flat_rows, texts) if correct_fn is not None else None
    sizes = [len(g) for g in samples]

    def regroup(xs: list) -> list[list]:
        out, i = [], 0
        for n in sizes:
            out.append(list(xs[i : i + n]))
            i += n
        return out

    return Scored(
        texts=[[s["text"] for s in g] for g in samples],
        lengths=[[len(s["token_ids"]) for s in g] for g in samples],
        rewards=regroup(list(rewards)),
        correct=regroup(correct) if correct is not None else None,
    )


def sample_seeds(count: int, seed: int) -> list[int]:
    """Per-prompt sampling seeds: the same prompts get the same random numbers at every eval."""
    return [seed * 1_000_003 + 17 + i for i in range(count)]


def sequences(rows: list[dict], samples: list[list[dict]], pad_id: int) -> Batch:
    """Prompt + sampled completion rows (with the sampling log-probs) as one padded batch."""
    return build_sequences(
        [r["prompt_ids"] for r, g in zip(rows, samples) for _ in g],
        [s["token_ids"] for g in samples for s in g],
        [s["logprobs"] for g in samples for s in g],
        pad_id=pad_id,
    )


# ----------------------------------------------------------------------------- in the loop
def evaluate_in_loop(trainer: Any) -> dict[str, float]:
    """``eval/*`` metrics of the live policy on the first ``trainer.eval_prompts`` eval rows,
    generated by the trainer's rollout engines (call after the weight sync)."""
    if getattr(trainer, "rollout", None) is None:
        return {}
    cfg = trainer.cfg
    t0 = time.perf_counter()
    rows = getattr(trainer, "_eval_rows", None)
    if rows is None:
        rows = list(load_prompts(cfg, trainer.tokenizer, "eval"))[: cfg.trainer.eval_prompts]
        trainer._eval_rows = rows
    if not rows:
        return {}
    ids = [r["prompt_ids"] for r in rows]
    max_tokens = cfg.rollout.max_new_tokens
    seeds = sample_seeds(len(ids), cfg.trainer.seed)
    greedy, g_s = trainer.rollout.generate(ids, 1, max_tokens=max_tokens, temperature=0.0)
    sampled, s_s = trainer.rollout.generate(
        ids, IN_LOOP_SAMPLES, max_tokens=max_tokens, seeds=seeds
    )

    def reward_fn(prompts: list[str], texts: list[str], cols: dict) -> list[float | None]:
        scores, _ = trainer.reward.score_async(prompts, texts, cols, trainer.step).result()
        return scores

    data_spec = cfg.data.eval or cfg.data.train
    correct = correctness_fn(data_spec, rows)
    m = summarize(
        score_pass(rows, greedy, reward_fn, correct),
        score_pass(rows, sampled, reward_fn, correct),
        ks=(1, IN_LOOP_SAMPLES),
        cross=False,  # quadratic in prompts, every eval; `rlpost eval` reports it
    )
    ref = getattr(trainer, "reference", None)
    if ref is not None:
        pad = trainer.tokenizer.pad_token_id or 0
        batch = sequences(rows, sampled, pad)
        ref_lp = ref.logprobs_async(batch).result()
        m.update(kl_metrics(batch["old_logp"], ref_lp, batch["response_mask"]))
    tokens = sum(len(s["token_ids"]) for g in greedy + sampled for s in g)
    out = {f"eval/{k}": float(v) for k, v in m.items()}
    out["eval/tokens_per_s"] = tokens / max(g_s + s_s, 1e-9)
    out["timing_s/eval"] = time.perf_counter() - t0
    return out
