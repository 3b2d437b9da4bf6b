"""Run directory, metrics JSONL (always), console progress, wandb / tensorboard when enabled.

A metric whose value is a list is a per-row column (TRL's ``log_extra``, keys ``samples/...``):
it goes to ``samples.jsonl`` (and a W&B table), never into the scalar metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlpost.config import Config, dump_yaml, to_dict

log = logging.getLogger("rlpost")

# What the progress line shows, and its label there (the JSONL has every metric).
SHOWN = {
    "reward/mean": "reward",
    "kl/mean": "kl",
    "loss/policy": "loss",
    "loss/sft": "loss",
    "eval/accuracy": "eval_acc",
    "timing_s/step": "s/step",
    "perf/tokens_per_s": "tok/s",
}


def write_text_atomic(path: Path, text: str) -> None:
    """Whole or not at all: a reader (or a resumed command) never sees a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def setup_logging(path: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True
    )


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class Timer:
    """Collects ``timing_s/<phase>`` durations for one step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"timing_s/{phase}"] = self.times.get(f"timing_s/{phase}", 0.0) + (
                time.perf_counter() - t0
            )


class Tracker:
    def __init__(self, cfg: Config, run_dir: Path, total_steps: int, start_step: int = 0) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tty = sys.stderr.isatty() and cfg.logging.progress
        self.bar = None
        if self.tty:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self.wandb = None
        if cfg.logging.wandb:
            import wandb

            if cfg.logging.wandb_mode:
                os.environ["WANDB_MODE"] = cfg.logging.wandb_mode
            self.wandb = wandb.init(
                **wandb_target(cfg),
                name=run_dir.name,
                dir=str(run_dir),
                config=to_dict(cfg),
                resume="allow",
                id=run_dir.name.replace("/", "-"),
            )
        self.tb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        columns = {k: list(v) for k, v in metrics.items() if isinstance(v, (list, tuple))}
        scalars = {k: v for k, v in metrics.items() if k not in columns}
        row = {"step": step, **{k: _clean(v) for k, v in sorted(scalars.items())}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if columns:
            with (self.run_dir / "samples.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, **columns}, default=str) + "\n")
        if self.wandb is not None:
            logged = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            if columns:
                logged["samples"] = _wandb_table(columns)
            self.wandb.log(logged, step=step)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        shown = " ".join(
            f"{label}={row[k]:.4g}"
            for k, label in SHOWN.items()
            if isinstance(row.get(k), (int, float))
        )
        if self.bar is not None:
            self.bar.set_postfix_str(shown)
            self.bar.update(1)
        elif step % max(1, self.cfg.logging.log_every) == 0:
            log.info("step %d %s", step, shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
            import wandb

            wandb.teardown()  # flush the offline run file now, not at interpreter exit
        if self.tb is not None:
            self.tb.close()


def check_finite(step: int, metrics: dict[str, Any]) -> None:
    """Stop the run on a NaN metric (call after logging it: the row stays on disk)."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
    if bad:
        raise FloatingPointError(f"step {step}: non-finite metrics {bad}")


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``prefix`` before every key that has no ``loss/`` or ``prefix`` of its own (critic's)."""
    return {k if k.startswith(("loss/", prefix)) else prefix + k: v for k, v in metrics.items()}


def batch_metrics(batch: Any, exp: Any, step_s: float) -> dict[str, float]:
    """Throughput, lengths and policy versions of one step's batch."""
    mask = batch["response_mask"]
    resp_tokens = float(mask.sum())
    versions = batch.columns.get("policy_version", [exp.policy_version])
    gen_s = batch.meta.get("gen_seconds", 0.0)  # engine seconds, set where the batch was made
    return {
        "timing_s/step": step_s,
        "timing_s/generate_engine": gen_s,
        "perf/tokens_per_s": resp_tokens / max(step_s, 1e-9),
        "perf/gen_tokens_per_s": resp_tokens / max(gen_s, 1e-9),
        "response/length_mean": resp_tokens / max(len(batch), 1),
        "response/clip_frac": sum(f == "length" for f in batch.columns.get("finish_reason", []))
        / max(len(batch), 1),
        "policy_version": float(exp.policy_version),
        "rollout/sample_version_min": float(min(versions)),
        "batch/rows": float(len(batch)),
        **(
            {"env/turns_mean": sum(batch["turns"]) / max(len(batch), 1)} if "turns" in batch else {}
        ),
    }


def wandb_target(cfg: Config) -> dict[str, str | None]:
    """project / entity / group: the config's when set, else W&B's own environment variables."""
    lg = cfg.logging
    project = lg.wandb_project if lg.wandb_project not in ("", "rlpost") else ""
    return {
        "project": project or os.environ.get("WANDB_PROJECT") or lg.wandb_project or "rlpost",
        "entity": getattr(lg, "wandb_entity", "") or os.environ.get("WANDB_ENTITY") or None,
        "group": getattr(lg, "wandb_group", "") or os.environ.get("WANDB_RUN_GROUP") or None,
    }


def _wandb_table(columns: dict[str, list]) -> Any:
    import wandb

    n = max(len(v) for v in columns.values())
    names = sorted(columns)
    rows = [
        [_cell(columns[c][i]) if i < len(columns[c]) else None for c in names] for i in range(n)
    ]
    return wandb.Table(columns=names, data=rows)


def _cell(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str)


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_wandb_history(wandb_file: str | Path) -> list[dict[str, Any]]:
    """History rows of an offline ``run-*.wandb`` file (a LevelDB-style log of protobuf records),
    so tests and users can check what an offline run recorded without syncing it."""

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    block, pos, chunks, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        piece, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        chunks = piece if kind in (1, 2) else chunks + piece
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunks)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows
