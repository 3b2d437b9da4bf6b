"""`rlpost rm-data` and `rlpost train-rm`: preference pairs labelled by a gold reward, and a
Bradley–Terry reward model trained on them.

Why: reward-model over-optimisation (Coste et al. 2023) needs *proxy* reward models that learned
the gold reward from a limited set of preferences; a random-init reward model is only noise.

* ``rm-data`` samples K completions per prompt from a policy (the in-process vLLM engine of
  `rlpost eval`), scores each with a gold reward (reward specs as in ``reward.functions``; default
  the data's task verifier) and writes every within-prompt pair with different scores as a JSONL
  row ``{"prompt", "chosen", "rejected", ...}`` (the layout TRL's RewardTrainer and OpenRLHF read).
  ``prompt`` is the rendered prompt text exactly as the trainer hands it to a reward model.
* ``train-rm`` fits a sequence-classification model on such pairs with −log σ(r_c − r_r − m),
  reading each pair through :class:`rewards.model.RewardModel` (same template, truncation and
  tokenisation as at RL time), and saves it with ``save_pretrained`` (atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from rewards.model import RewardModel
from rewards.pipeline import RewardPipeline
from rlpost.commands.evaluate import (
    eval_config,
    eval_engine,
    resolve_policy,
    sample,
)
from rlpost.data import DataError, check_prompt, load_prompts
from rlpost.evaluation import score_pass
from rlpost.models import tiny
from rlpost.models.hf import load_tokenizer

PAIRS_COLUMNS = ("prompt", "chosen", "rejected")
METRICS_FILE = "train_rm_metrics.jsonl"
SUMMARY_FILE = "train_rm.json"


def _opt(default: Any = MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes``)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ----------------------------------------------------------------------------- options
@dataclass
class RMDataOptions:
    """`rlpost rm-data`: which policy samples, on which prompts, scored by which gold."""

    model: str = _opt(help="policy: HF model dir, run dir (final/ or latest), or tiny:PRESET")
    out: str = _opt(help="where the pairs JSONL goes")
    data: str = _opt("", help="prompts, as data.train: task:NAME?opts or a file (default: run's)")
    prompts: int = _opt(200, help="number of prompts (the first N of the train split)")
    n: int = _opt(4, help="samples per prompt")
    max_new_tokens: int = _opt(0, help="completion length; 0 = the run's / config default")
    temperature: float = _opt(1.0, help="sampling temperature")
    seed: int = _opt(0, help="data and sampling seed")
    reward: list[str] = _opt(
        [], help="gold reward spec (repeatable, summed); default: the task verifier of --data"
    )


@dataclass
class TrainRMOptions:
    """`rlpost train-rm`: base model, pairs, optimiser and split."""

    model: str = _opt(help="base sequence-classification model dir (or tiny:rm-nano)")
    pairs: str = _opt(help="pairs JSONL with prompt, chosen, rejected (e.g. from rm-data)")
    out: str = _opt(help="output dir for the trained model + tokenizer (replaced atomically)")
    epochs: int = _opt(3, help="passes over the training pairs")
    batch_size: int = _opt(16, help="pairs per optimiser step")
    lr: float = _opt(1e-4, help="AdamW learning rate")
    weight_decay: float = _opt(0.0, help="AdamW weight decay")
    grad_clip: float = _opt(1.0, help="max gradient norm; 0 = off")
    seed: int = _opt(0, help="torch seed (a new score head), batch order and the --subset draw")
    eval_fraction: float = _opt(0.1, help="held-out fraction of prompts (their pairs) for eval")
    eval_seed: int = _opt(0, help="seed of the held-out split (keep it fixed across members)")
    subset: float = _opt(1.0, help="train on this random fraction of the training pairs")
    bootstrap: bool = _opt(
        False,
        help="train on a bootstrap resample (as many pairs, drawn with replacement, after "
        "--subset): with a distinct --seed per member, an ensemble of Coste et al.'s kind",
    )
    test_pairs: str = _opt(
        "",
        help="independent pairs file also evaluated each epoch (its prompts seen in --pairs "
        "are dropped), e.g. rm-data with another --seed; '' = none",
    )
    margin_column: str = _opt("", help="column with a margin m per pair; '' = no margin")
    max_length: int = _opt(1024, help="max tokens per text (left-truncated, as at scoring)")
    device: str = _opt("auto", help="auto (cuda if available, else cpu), cpu, cuda")
    threads: int = _opt(0, help="torch CPU threads; 0 = torch's default")


def add_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per dataclass field, with its help; fields without default are required."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if f.default is MISSING and f.default_factory is MISSING:
            p.add_argument(flag, dest=f.name, required=True, help=helptext)
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action="store_true", help=helptext)
        elif f.default_factory is not MISSING:
            p.add_argument(flag, dest=f.name, action="append", default=[], help=helptext)
        else:
            kind = type(f.default)
            p.add_argument(flag, dest=f.name, type=kind, default=f.default, help=helptext)


def options_from(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def resolve_model(path: str) -> str:
    """``tiny:PRESET`` → the cached tiny model; anything else unchanged."""
    if path.startswith("tiny:"):
        return str(tiny.ensure(path.split(":", 1)[1]))
    return path


# ----------------------------------------------------------------------------- rm-data
def pairs_from_group(texts: list[str], scores: list[float | None]) -> list[tuple[int, int]]:
    """(chosen, rejected) indices of every pair of one prompt's samples with different scores;
    unscored samples and duplicate text pairs are skipped."""
    out, seen = [], set()
    for i, (ti, si) in enumerate(zip(texts, scores)):
        for j, (tj, sj) in enumerate(zip(texts, scores)):
            if si is None or sj is None or not si > sj or (ti, tj) in seen:
                continue
            seen.add((ti, tj))
            out.append((i, j))
    return out


def gold_config(model: str, data: str, gold: list[str], seed: int, who: str) -> tuple[Path, Any]:
    """(model dir, Config) whose reward is the gold alone: ``gold`` specs, else the task's
    verifier — never a run's own reward models. ``who`` names the flag in the error."""
    model_dir, run_dir = resolve_policy(resolve_model(model))
    cfg = eval_config(SimpleNamespace(data=data, limit=0, seed=seed, reward=[]), model_dir, run_dir)
    if not (gold or cfg.data.train.startswith("task:")):
        raise DataError(f"{who} is required when --data is not task:NAME")
    reward = dataclasses.replace(
        cfg.reward, functions=list(gold), models=[], remote=[], weights=[], workers=0
    )
    return model_dir, dataclasses.replace(cfg, reward=reward)


def sample_and_score(
    model_dir: Path,
    cfg: Any,
    rows: list[dict],
    n: int,
    max_tokens: int,
    temperature: float,
    seeds: list[int],
) -> tuple[Any, float, float]:
    """n samples per row from the in-process engine, scored by the config's (gold) reward:
    (Scored, engine start seconds, generation seconds)."""
    t0 = time.time()
    engine = eval_engine(model_dir, cfg)
    engine_s, t0 = time.time() - t0, time.time()
    samples = sample(engine, rows, n, max_tokens, temperature, seeds)  # seeds spaced by n
    del engine
    gen_s = time.time() - t0
    pipeline = RewardPipeline(cfg)
    try:
        scored = score_pass(
            rows, samples, lambda ps, ts, cols: pipeline.score(ps, ts, cols)[0], None
        )
    finally:
        pipeline.close()
    return scored, engine_s, gen_s


def make_pairs(opts: RMDataOptions) -> dict[str, Any]:
    """Sample, score, pair and write; returns a summary dict."""

    if opts.prompts < 1 or opts.n < 2:
        raise DataError(f"rm-data: need --prompts >= 1 and --n >= 2, got {opts.prompts}, {opts.n}")
    model_dir, cfg = gold_config(opts.model, opts.data, opts.reward, opts.seed, "rm-data: --reward")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task_size=opts.prompts))
    if cfg.data.env:
        raise DataError("rm-data: multi-turn data (data.env) is not supported")
    tok = load_tokenizer(str(model_dir))
    rows = list(load_prompts(cfg, tok, "train"))[: opts.prompts]
    max_tokens = opts.max_new_tokens or cfg.rollout.max_new_tokens
    seeds = [opts.seed * 1_000_003 + 7919 + i * opts.n for i in range(len(rows))]
    scored, engine_s, gen_s = sample_and_score(
        model_dir, cfg, rows, opts.n, max_tokens, opts.temperature, seeds
    )

    out_rows, prompts_with_pairs = [], 0
    for i, (row, texts, scores) in enumerate(zip(rows, scored.texts, scored.rewards)):
        pairs = pairs_from_group(texts, scores)
        prompts_with_pairs += bool(pairs)
        for c, r in pairs:
            out_rows.append(
                {
                    "prompt": row["prompt"],
                    "chosen": texts[c],
                    "rejected": texts[r],
                    "chosen_score": scores[c],
                    "rejected_score": scores[r],
                    "row": i,
                }
            )
    out = Path(opts.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w") as f:
        for r in out_rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)
    flat = [s for g in scored.rewards for s in g if s is not None]
    return {
        "pairs": len(out_rows),
        "prompts": len(rows),
        "prompts_with_pairs": prompts_with_pairs,
        "samples": sum(len(g) for g in scored.texts),
        "gold_mean": sum(flat) / len(flat) if flat else float("nan"),
        "engine_seconds": engine_s,
        "gen_seconds": gen_s,
        "model": str(model_dir),
        "data": cfg.data.train,
        "out": str(out),
    }


# ----------------------------------------------------------------------------- pairs I/O
def load_pairs(path: str | Path, margin_column: str = "") -> list[dict[str, Any]]:
    """Rows of a pairs JSONL (or a .json list) as {prompt, chosen, rejected, margin}; a bad row
    raises DataError naming the file, the row (0-based, blank lines not counted) and the column."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    source = str(p)
    raw: list[Any] = []
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: does not parse as JSON: {e}") from e
    else:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: row {len(raw)} does not parse as JSON: {e}") from e
    if not raw:
        raise DataError(f"{source}: no rows (expected JSONL rows with prompt, chosen, rejected)")
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise DataError(f"{source}: row {i}: expected a JSON object, got {type(r).__name__}")
        for col in (*PAIRS_COLUMNS, *((margin_column,) if margin_column else ())):
            if col not in r:
                raise DataError(
                    f"{source}: row {i}, column '{col}': missing (pairs need prompt, chosen, "
                    f"rejected; row has {', '.join(r) or 'no columns'})"
                )
        margin = 0.0
        if margin_column:
            m = r[margin_column]
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
                raise DataError(
                    f"{source}: row {i}, column '{margin_column}': expected a finite number, "
                    f"got {m!r}"[:300]
                )
            margin = float(m)
        rows.append(
            {
                "prompt": check_prompt(r["prompt"], source, i, "prompt"),
                "chosen": _completion(r["chosen"], source, i, "chosen"),
                "rejected": _completion(r["rejected"], source, i, "rejected"),
                "margin": margin,
            }
        )
    return rows


def _completion(value: Any, source: str, row: int, column: str) -> str:
    """A completion is text; an empty one is allowed (a policy can stop at once, and lose)."""
    if isinstance(value, str):
        return value
    what = "missing (null)" if value is None else f"expected a string, got {type(value).__name__}"
    raise DataError(f"{source}: row {row}, column '{column}': {what}")


def split_pairs(
    rows: list[dict], eval_fraction: float, eval_seed: int
) -> tuple[list[dict], list[dict]]:
    """(train, eval) by prompt: all pairs of a held-out prompt are held out, so eval accuracy
    measures prompts the model never saw. At least one prompt stays on the training side."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction: must be in [0, 1), got {eval_fraction}")
    keys = sorted({_prompt_key(r) for r in rows})
    random.Random(f"rlpost-rm-split:{eval_seed}").shuffle(keys)
    k = min(math.ceil(eval_fraction * len(keys)), len(keys) - 1)
    held = set(keys[:k])
    train = [r for r in rows if _prompt_key(r) not in held]
    return train, [r for r in rows if _prompt_key(r) in held]


def _prompt_key(row: dict) -> str:
    return json.dumps(row["prompt"], sort_keys=True)


# ----------------------------------------------------------------------------- train-rm
def bradley_terry_loss(chosen: Any, rejected: Any, margin: Any = None) -> Any:
    """Mean −log σ(r_chosen − r_rejected − margin) (Bradley–Terry; margin as in Llama 2)."""

    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def _batch_rewards(rm: Any, batch: list[dict]) -> tuple[Any, Any]:
    """Rewards of chosen and rejected texts, formed exactly as RewardModel.score forms them."""
    texts = [rm.format(r["prompt"], r["chosen"]) for r in batch]
    texts += [rm.format(r["prompt"], r["rejected"]) for r in batch]
    values = rm.reward(rm.model(**rm.encode(texts)).logits)
    return values[: len(batch)], values[len(batch) :]


def evaluate_pairs(rm: Any, rows: list[dict], batch_size: int) -> dict[str, float]:
    """Mean BT loss and pairwise accuracy (a tie counts one half) of ``rows``."""

    if not rows:
        return {}
    loss, correct = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            c, r = _batch_rewards(rm, batch)
            m = torch.tensor([x["margin"] for x in batch], dtype=c.dtype, device=c.device)
            loss += float(bradley_terry_loss(c, r, m)) * len(batch)
            correct += float((c > r).sum()) + 0.5 * float((c == r).sum())
    return {"loss": loss / len(rows), "accuracy": correct / len(rows)}


def train_rm(opts: TrainRMOptions) -> dict[str, Any]:
    """Fit the reward model; returns the final metrics row.

    A single-process torch loop: enough for the tiny reward models of the tests and of
    launch/compare/ensembles.yaml. A large reward model would go through the DeepSpeed learner
    group (rlpost/runtime/learner.py) instead.
    """

    for key in ("epochs", "batch_size"):
        if getattr(opts, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')}: must be >= 1, got {getattr(opts, key)}")
    if not 0.0 < opts.subset <= 1.0:
        raise ValueError(f"--subset: must be in (0, 1], got {opts.subset}")
    rows = load_pairs(opts.pairs, opts.margin_column)
    train, held = split_pairs(rows, opts.eval_fraction, opts.eval_seed)
    test: list[dict] = []
    if opts.test_pairs:
        seen = {_prompt_key(r) for r in rows}
        test = [
            r for r in load_pairs(opts.test_pairs, opts.margin_column) if _prompt_key(r) not in seen
        ]
    rng = random.Random(f"rlpost-rm-train:{opts.seed}")
    if opts.subset < 1.0:
        train = rng.sample(train, max(1, round(opts.subset * len(train))))
    if opts.bootstrap:
        train = rng.choices(train, k=len(train))
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    base = resolve_model(opts.model)
    torch.manual_seed(opts.seed)
    rm = RewardModel(
        base, device=device, batch_size=opts.batch_size, max_length=opts.max_length,
        dtype="float32",
    )  # fmt: skip
    opt = torch.optim.AdamW(rm.model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    out = Path(opts.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    t_start = time.time()
    try:
        metrics_f = (tmp / METRICS_FILE).open("w")

        def log(row: dict[str, Any]) -> None:
            metrics_f.write(json.dumps(row) + "\n")
            metrics_f.flush()
            shown = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
            print(shown, flush=True)

        def epoch_row(epoch: int, loss: float | None, secs: float) -> dict[str, Any]:
            rm.model.eval()
            tr = evaluate_pairs(rm, train, opts.batch_size)
            ev = evaluate_pairs(rm, held, opts.batch_size)
            row: dict[str, Any] = {"epoch": epoch, "loss": loss if loss is not None else tr["loss"]}
            row["train_accuracy"] = tr["accuracy"]
            if ev:
                row["eval_loss"], row["eval_accuracy"] = ev["loss"], ev["accuracy"]
            te = evaluate_pairs(rm, test, opts.batch_size)
            if te:
                row["test_loss"], row["test_accuracy"] = te["loss"], te["accuracy"]
            row["seconds"] = secs
            return row

        last = epoch_row(0, None, 0.0)  # before training: the base model's agreement
        log(last)
        for epoch in range(1, opts.epochs + 1):
            t0 = time.time()
            rm.model.train()
            order = list(train)
            rng.shuffle(order)
            total = 0.0
            for s in range(0, len(order), opts.batch_size):
                batch = order[s : s + opts.batch_size]
                c, r = _batch_rewards(rm, batch)
                m = torch.tensor([x["margin"] for x in batch], dtype=c.dtype, device=c.device)
                loss = bradley_terry_loss(c, r, m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if opts.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(rm.model.parameters(), opts.grad_clip)
                opt.step()
                total += loss.item() * len(batch)
            last = epoch_row(epoch, total / len(order), time.time() - t0)
            log(last)
        metrics_f.close()
        rm.model.eval()
        rm.model.save_pretrained(tmp)
        load_tokenizer(base).save_pretrained(tmp)  # as the base had it
        summary = {
            "base": base,
            "pairs": opts.pairs,
            "train_pairs": len(train),
            "distinct_train_pairs": len({json.dumps(r, sort_keys=True) for r in train}),
            "eval_pairs": len(held),
            "test_pairs": len(test),
            "train_seconds": time.time() - t_start,
            "final": last,
            "options": dataclasses.asdict(opts),
        }
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` dir to ``out``; an existing ``out`` (e.g. the base itself) is
    moved aside first and removed only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI
def _data_error(e: DataError) -> int:

    print(f"data error: {e}", file=sys.stderr)
    return 2


def _rm_data(args: argparse.Namespace) -> int:
    try:
        summary = make_pairs(options_from(RMDataOptions, args))
    except DataError as e:
        return _data_error(e)
    print(
        f"{summary['pairs']} pairs from {summary['prompts_with_pairs']}/{summary['prompts']} "
        f"prompts ({summary['samples']} samples, gold mean {summary['gold_mean']:.3f}, "
        f"engine start {summary['engine_seconds']:.1f}s, generation {summary['gen_seconds']:.1f}s)"
    )
    print(f"pairs: {summary['out']}")
    return 0


def _train_rm(args: argparse.Namespace) -> int:
    opts = options_from(TrainRMOptions, args)
    try:
        summary = train_rm(opts)
    except DataError as e:
        return _data_error(e)
    f = summary["final"]
    acc = f"train_accuracy={f['train_accuracy']:.3f}"
    if "eval_accuracy" in f:
        acc += f" eval_accuracy={f['eval_accuracy']:.3f} ({summary['eval_pairs']} held-out pairs)"
    if "test_accuracy" in f:
        acc += f" test_accuracy={f['test_accuracy']:.3f} ({summary['test_pairs']} pairs)"
    print(f"{acc} in {summary['train_seconds']:.1f}s")
    print(f"reward model: {Path(opts.out).expanduser()}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rm-data",
        help="sample a policy, score with a gold reward, write preference pairs (JSONL)",
        description=(
            "K completions per prompt from an in-process vLLM engine, scored by the gold reward; "
            "every within-prompt pair with different scores becomes a {prompt, chosen, rejected} "
            "row. Example: rlpost rm-data --model runs/demo/sft/final "
            "--data 'task:countdown?count=2&max_num=10' --prompts 200 --n 4 --out pairs.jsonl"
        ),
    )
    add_options(p, RMDataOptions)
    p.set_defaults(func=_rm_data)

    t = subparsers.add_parser(
        "train-rm",
        help="train a Bradley-Terry reward model on preference pairs (JSONL)",
        description=(
            "−log σ(r_chosen − r_rejected) with AdamW on a sequence-classification model; texts "
            "are formed as the reward-model scorer forms them. Writes the model, its tokenizer "
            f"and {METRICS_FILE} into --out. Example: rlpost train-rm --model runs/rm/init-s1 "
            "--pairs pairs.jsonl --subset 0.8 --seed 1 --out runs/rm/s1"
        ),
    )
    add_options(t, TrainRMOptions)
    t.set_defaults(func=_train_rm)
