"""`rlpost eval`: evaluate a policy (an HF dir, a run's final model or its latest checkpoint) on
held-out prompts with the metrics of rlpost/evaluation.py, generating with the trainer's own
rollout engine class and scoring the reference with its frozen-model worker, both in process."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from rewards.pipeline import RewardPipeline
from rlpost import checkpoint
from rlpost.batch import Batch
from rlpost.config import Config, ConfigError, config_from_dict
from rlpost.data import load_prompts
from rlpost.evaluation import (
    correctness_fn,
    kl_metrics,
    sample_seeds,
    score_pass,
    sequences,
    summarize,
)
from rlpost.models import tiny
from rlpost.models.hf import load_tokenizer
from rlpost.runtime.frozen import FrozenWorker
from rlpost.runtime.rollout import VLLMEngine
from rlpost.tracking import write_text_atomic


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
    # heavy, and only this path needs it: imported when a checkpoint is exported
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

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
    load_tokenizer(conf["model"].get("tokenizer") or base).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def eval_config(args: argparse.Namespace, model_dir: Path, run_dir: Path | None):
    """The Config that drives data loading and rewards: the run's own (when evaluating a run)
    with the model, data and seed from the command line."""
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


def eval_engine(model_dir: str | Path, cfg: Config) -> VLLMEngine:
    """The rollout engine the trainer uses, built in this process (no Ray): fp32 on CPU so eval
    log-probs compare with the reference's, bf16 on a GPU (``rollout.dtype=auto``)."""
    dtype = "auto" if torch.cuda.is_available() else "float32"
    cfg = replace(cfg, rollout=replace(cfg.rollout, dtype=dtype, engines=1))
    return VLLMEngine(cfg, str(model_dir), 0)


def sample(
    engine: VLLMEngine,
    rows: list[dict],
    n: int,
    max_tokens: int,
    temperature: float,
    seeds: list[int] | None,
) -> list[list[dict]]:
    """Per row, its ``n`` sample dicts (token_ids, text, logprobs, finish_reason)."""
    ids = [r["prompt_ids"] for r in rows]
    return engine.generate(ids, n, max_tokens, seeds, temperature=temperature)["samples"]


def reference_logprobs(cfg: Config, path: str, batch: Batch, temperature: float) -> torch.Tensor:
    """The frozen reference's log-probs, by the same worker class the trainer runs as an actor."""
    cfg = replace(cfg, rollout=replace(cfg.rollout, temperature=temperature))
    return FrozenWorker(cfg, path, threads=torch.get_num_threads()).logprobs(batch)


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Generate with an in-process vLLM engine, score, and return the result dict."""
    model_dir, run_dir = resolve_policy(args.model)
    cfg = eval_config(args, model_dir, run_dir)
    tok = load_tokenizer(str(model_dir))
    rows = list(load_prompts(cfg, tok, "eval"))
    if args.limit:
        rows = rows[: args.limit]
    if not rows:
        raise ValueError(f"--data {args.data or cfg.data.train}: no eval rows")
    ks = sorted({k for k in args.k if 1 <= k <= args.n}) or [1]
    max_tokens = args.max_new_tokens or cfg.rollout.max_new_tokens
    seed = cfg.trainer.seed

    engine = eval_engine(model_dir, cfg)
    gen_s, greedy_samples = 0.0, None
    if args.greedy:
        t0 = time.time()
        greedy_samples = sample(engine, rows, 1, max_tokens, 0.0, None)
        gen_s += time.time() - t0
    t0 = time.time()
    seeds = sample_seeds(len(rows), seed)
    sampled = sample(engine, rows, args.n, max_tokens, args.temperature, seeds)
    gen_s += time.time() - t0
    del engine

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
        if ref.startswith("tiny:"):
            ref = str(tiny.ensure(ref.split(":", 1)[1]))
        batch = sequences(rows, sampled, tok.pad_token_id or 0)
        ref_lp = reference_logprobs(cfg, ref, batch, args.temperature)
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
            "limit": args.limit,  # asked for; a task with fewer held-out problems gives fewer
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

    conf = yaml.safe_load((run_dir / "config.yaml").read_text())
    return conf.get("reference", {}).get("path") or conf["model"]["path"]


def write_json(result: dict[str, Any], out: str | Path) -> Path:
    """Atomic write; NaN (a metric with no data) becomes null."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
    }
    write_text_atomic(out, json.dumps(clean, indent=2) + "\n")
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
