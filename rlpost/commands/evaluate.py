"""Evaluate a policy on held-out prompts: `rlpost eval`, and the trainer's in-loop evaluation.

One protocol for both, so a baseline measured by `rlpost eval` sits on the same curve as the
trainer's ``eval/*`` metrics:

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

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    from rlpost.metrics import meteor

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
    from rlpost.metrics import distinct_n, pairwise_meteor

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
    from rlpost.objective import kl_estimate

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
    from envs.base import get_task
    from envs.verify import numeric_match

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


def _sequences(rows: list[dict], samples: list[list[dict]], pad_id: int):
    from rlpost.batch import build_sequences

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
        from rlpost.data import load_prompts

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
        batch = _sequences(rows, sampled, pad)
        ref_lp = ref.logprobs_async(batch).result()
        m.update(kl_metrics(batch["old_logp"], ref_lp, batch["response_mask"]))
    tokens = sum(len(s["token_ids"]) for g in greedy + sampled for s in g)
    out = {f"eval/{k}": float(v) for k, v in m.items()}
    out["eval/tokens_per_s"] = tokens / max(g_s + s_s, 1e-9)
    out["timing_s/eval"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- the CLI
def resolve_policy(path: str | Path) -> tuple[Path, Path | None]:
    """(HF model dir, run dir or None) for an HF dir, a run dir's ``final/``, or a run dir's
    latest checkpoint (exported to ``<run>/exports/step-N`` once)."""
    p = Path(path).expanduser()
    if (p / "config.json").exists():
        run = p.parent if (p.parent / "config.yaml").exists() else None
        return p, run
    if (p / "final" / "config.json").exists():
        return p / "final", p
    from rlpost import checkpoint

    ckpt = checkpoint.latest(p / "checkpoints") if (p / "checkpoints").exists() else None
    if ckpt is None:
        raise FileNotFoundError(
            f"--model {path}: not a Hugging Face model dir (no config.json), and not a run dir "
            f"with final/ or checkpoints/latest"
        )
    return export_checkpoint(ckpt, p), p


def export_checkpoint(ckpt: Path, run_dir: Path) -> Path:
    """A DeepSpeed checkpoint of the policy → HF dir (weights from ZeRO shards, config and
    tokenizer from the run's base model)."""
    import torch
    import yaml
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = run_dir / "exports" / ckpt.name
    if (out / "config.json").exists():
        return out
    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    base = conf["model"]["path"]
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "policy"), tag="ds")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"export of {ckpt}: state dict does not match {base}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(conf["model"].get("tokenizer") or base).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def eval_config(args: argparse.Namespace, model_dir: Path, run_dir: Path | None):
    """The Config that drives data loading and rewards: the run's own (when evaluating a run)
    with the model, data and seed from the command line."""
    import yaml

    from rlpost.config import Config, ConfigError, config_from_dict

    cfg = Config()
    if run_dir is not None and (run_dir / "config.yaml").exists():
        cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    data = cfg.data
    if args.data:
        is_task = args.data.startswith("task:")
        data = replace(data, train=args.data, eval="" if is_task else args.data)
    if not (data.train or data.eval):
        raise ConfigError("--data: required when --model is not a run directory")
    if args.limit:
        data = replace(data, eval_size=max(args.limit, 1))
    trainer = replace(cfg.trainer, seed=args.seed if args.seed is not None else cfg.trainer.seed)
    reward = replace(cfg.reward, workers=0)  # in this process: no worker pool to start
    if args.reward:
        reward = replace(reward, functions=list(args.reward))
    model = replace(cfg.model, path=str(model_dir), tokenizer=str(model_dir))
    return replace(cfg, model=model, data=data, trainer=trainer, reward=reward)


def _hf_logprobs(model_dir: str, batch: Any, temperature: float, micro: int = 16) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from rlpost.runtime.learner import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = batch["input_ids"].shape[1]
    outs = []
    with torch.no_grad():
        for mb in batch.split(micro):
            mb = mb.trim()
            logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
            lp = token_logprobs(logits, mb["input_ids"], temperature)
            outs.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
    return torch.cat(outs)


def _vllm_samples(outs: Any) -> list[list[dict]]:
    return [
        [
            {
                "text": c.text,
                "token_ids": list(c.token_ids),
                "logprobs": [
                    next(iter(d.values())).logprob if d else 0.0 for d in c.logprobs or []
                ],
                "finish_reason": c.finish_reason,
            }
            for c in o.outputs
        ]
        for o in outs
    ]


def vllm_engine(model_dir: str | Path, cfg: Any, seed: int) -> Any:
    """The in-process vLLM engine of `rlpost eval` (and `rlpost rm-data`): no Ray, fp32 on CPU,
    processed log-probs as in training."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch
    from vllm import LLM

    on_gpu = torch.cuda.is_available()
    return LLM(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype="auto" if on_gpu else "float32",
        enforce_eager=True,
        seed=seed,
        max_model_len=cfg.rollout.max_model_len,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        logprobs_mode="processed_logprobs",
        enable_prefix_caching=True,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def sampling_params(
    cfg: Any, n: int, max_tokens: int, temperature: float, seeds: Sequence[int]
) -> list[Any]:
    """One seeded SamplingParams per prompt, with the run's top-p/top-k/stop (as in training)."""
    from vllm import SamplingParams

    stop = list(cfg.rollout.stop) or None
    return [
        SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            seed=s,
            logprobs=0,
            stop=stop,
        )
        for s in seeds
    ]


def generate_chunked(llm: Any, rows: list[dict], params: Any, n: int) -> list[list[dict]]:
    """Per row, its ``n`` sample dicts; ``params`` is one SamplingParams or one per row. Calls are
    cut so that Σ prompt tokens × n fits one scheduler step on CPU (seeded prefill)."""
    from rlpost.runtime.rollout import seeded_budget, token_chunks

    prompts = [{"prompt_token_ids": r["prompt_ids"]} for r in rows]
    each = params if isinstance(params, list) else [params] * len(rows)
    out: list[list[dict]] = []
    budget = seeded_budget(llm)
    lengths = [len(r["prompt_ids"]) for r in rows]
    for idx in token_chunks(lengths, n, budget) if budget else [range(len(rows))]:
        part, part_params = [prompts[i] for i in idx], [each[i] for i in idx]
        out += _vllm_samples(llm.generate(part, part_params, use_tqdm=False))
    return out


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Generate with an in-process vLLM engine, score, and return the result dict."""
    from transformers import AutoTokenizer

    from rewards.pipeline import RewardPipeline
    from rlpost.data import load_prompts

    model_dir, run_dir = resolve_policy(args.model)
    cfg = eval_config(args, model_dir, run_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = list(load_prompts(cfg, tok, "eval"))
    if args.limit:
        rows = rows[: args.limit]
    if not rows:
        raise ValueError(f"--data {args.data or cfg.data.train}: no eval rows")
    ks = sorted({k for k in args.k if 1 <= k <= args.n}) or [1]
    max_tokens = args.max_new_tokens or cfg.rollout.max_new_tokens
    seed = cfg.trainer.seed

    llm = vllm_engine(model_dir, cfg, seed)
    from vllm import SamplingParams

    stop = list(cfg.rollout.stop) or None  # as in training
    gen_s, greedy_samples = 0.0, None
    if args.greedy:
        t0 = time.time()
        params = SamplingParams(n=1, max_tokens=max_tokens, temperature=0.0, logprobs=0, stop=stop)
        greedy_samples = generate_chunked(llm, rows, params, 1)
        gen_s += time.time() - t0
    t0 = time.time()
    seeds = sample_seeds(len(rows), seed)
    params_list = sampling_params(cfg, args.n, max_tokens, args.temperature, seeds)
    sampled = generate_chunked(llm, rows, params_list, args.n)
    gen_s += time.time() - t0
    del llm

    pipeline = RewardPipeline(cfg)
    try:

        def reward_fn(ps: list[str], texts: list[str], cols: dict) -> list[float | None]:
            return pipeline.score(ps, texts, cols)[0]

        data_spec = cfg.data.eval or cfg.data.train
        correct = correctness_fn(data_spec, rows)
        g = score_pass(rows, greedy_samples, reward_fn, correct) if greedy_samples else None
        s = score_pass(rows, sampled, reward_fn, correct)
    finally:
        pipeline.close()
    result: dict[str, Any] = summarize(g, s, ks)
    ref = args.ref or (_run_base(run_dir) if run_dir is not None else "")
    if ref:
        from rlpost.models import tiny

        if ref.startswith("tiny:"):
            ref = str(tiny.ensure(ref.split(":", 1)[1]))
        batch = _sequences(rows, sampled, tok.pad_token_id or 0)
        ref_lp = _hf_logprobs(ref, batch, args.temperature)
        result.update(kl_metrics(batch["old_logp"], ref_lp, batch["response_mask"]))
    tokens = sum(len(x["token_ids"]) for grp in (greedy_samples or []) + sampled for x in grp)
    result.update(
        {
            "tokens_per_s": tokens / max(gen_s, 1e-9),
            "gen_seconds": gen_s,
            "model": str(model_dir),
            "reference": ref or None,
            "data": cfg.data.eval or cfg.data.train,
            "num_prompts": len(rows),
            "n": args.n,
            "temperature": args.temperature,
            "max_new_tokens": max_tokens,
            "seed": seed,
            "examples": [
                {
                    "prompt": r["prompt"],
                    "answer": r.get("answer"),
                    "greedy": greedy_samples[i][0]["text"] if greedy_samples else None,
                    "samples": [x["text"] for x in sampled[i]],
                }
                for i, r in enumerate(rows[:5])
            ],
        }
    )
    return result


def _run_base(run_dir: Path) -> str:
    """The model a run started from (its reference unless the run set another)."""
    import yaml

    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    return conf.get("reference", {}).get("path") or conf["model"]["path"]


def write_json(result: dict[str, Any], out: str | Path) -> Path:
    """Atomic write; NaN (a metric with no data) becomes null."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _eval(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise SystemExit("--n: must be >= 1")
    result = run_eval(args)
    path = write_json(result, args.out)
    shown = ["accuracy", "accuracy_sampled", "reward_mean", "kl", "diversity", "tokens_per_s"]
    shown += [k for k in result if k.startswith("pass@")]
    print(" ".join(f"{k}={result[k]:.4g}" for k in shown if isinstance(result.get(k), float)))
    print(f"eval result: {path}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a policy (HF dir or run dir) on an eval split: accuracy, pass@k, KL, ...",
        description=(
            "Greedy accuracy, pass@k over n samples, mean reward and length, KL to the reference, "
            "diversity and tokens/s, written as JSON. Example: rlpost eval --model runs/grpo-x "
            "--data task:arithmetic --n 4 --k 1,4 --out result.json"
        ),
    )
    p.add_argument("--model", required=True, help="HF model dir, or a run dir (final/ or latest)")
    p.add_argument("--data", default="", help="task:NAME or an eval file; default: the run's data")
    p.add_argument("--n", type=int, default=4, help="samples per prompt for the sampled pass")
    p.add_argument("--k", type=_ints, default=[1, 4], help="pass@k values, e.g. 1,4")
    p.add_argument("--ref", default="", help="reference model for KL; default: the run's base")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = the run's / config default")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N eval rows (0 = all)")
    p.add_argument("--seed", type=int, default=None, help="data and sampling seed (default: run's)")
    p.add_argument("--reward", action="append", default=[], help="reward function (repeatable)")
    p.add_argument("--no-greedy", dest="greedy", action="store_false", help="skip the greedy pass")
    p.add_argument("--out", default="eval.json", help="where the JSON result goes")
    p.set_defaults(func=_eval)
