"""`rlpost bench`: s/step on the anchor config with a per-phase breakdown, the pure generation
time of the same samples, and (when TRL is installed) TRL's GRPOTrainer on the same model and
prompts — side by side, in one run, because this machine's timings drift between runs.
`rlpost bench --sync small,llama-100m`: weight-sync seconds of the object store and the
collective transport on the same actors, per model size.

A benchmark script prints a report; no test asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoTokenizer

from algorithms.base import Needs
from rlpost import resources
from rlpost.config import load_config
from rlpost.data import load_prompts
from rlpost.runtime.cluster import start_actors
from rlpost.runtime.sync import WeightSync
from rlpost.tracking import read_metrics
from rlpost.trainer import Trainer

ANCHOR = resources.launch_file("recipes", "bench_small.yaml")
PHASES = ["generate", "score", "train", "sync"]

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_path, prompts_file, steps, out_file, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
prompts = json.load(open(prompts_file))
tok = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)

def reward(completions, **kw):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

times = []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t)

n = 8
args = GRPOConfig(output_dir=out_file + ".d", per_device_train_batch_size=len(prompts[:8]) * n,
                  num_generations=n, max_completion_length=128, max_steps=int(steps),
                  learning_rate=1e-6, logging_steps=1, report_to=[], save_strategy="no",
                  use_cpu=True, bf16=False, beta=0.04, temperature=1.0, seed=0,
                  dataloader_num_workers=0, gradient_accumulation_steps=1)
ds = Dataset.from_list([{"prompt": p} for p in prompts] * (int(steps) + 2))
trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
trainer.train()
json.dump({"step_s": times}, open(out_file, "w"))
"""


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_rlpost(steps: int, overrides: list[str], out_dir: Path) -> dict:
    """Train on the anchor config; steps after the first are timed (the first warms caches)."""

    cfg = load_config(
        ANCHOR,
        [
            f"trainer.steps={steps + 1}",
            f"trainer.output_dir={out_dir}",
            "trainer.run_name=bench",
            "trainer.export_hf=false",
            *overrides,
        ],
    )
    t0 = time.time()
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        startup = time.time() - t0
        trainer.fit()

        rows = read_metrics(trainer.run_dir / "metrics.jsonl")[1:]
        # Pure generation of the same samples (same prompts, n, max tokens) on the same engine.
        prompts = trainer.sampler.next(cfg.trainer.prompts_per_step)
        ids = [p["prompt_ids"] for p in prompts]
        gen = []
        for _ in range(3):
            t = time.perf_counter()
            trainer.rollout.generate(ids, cfg.rollout.n, seeds=list(range(len(ids))))
            gen.append(time.perf_counter() - t)
        params = trainer.learners.num_params
    finally:
        trainer.shutdown()
        ray.shutdown()
    return {
        "startup_s": startup,
        "step_s": _median([r["timing_s/step"] for r in rows]),
        "phases": {p: _median([r.get(f"timing_s/{p}", 0.0) for r in rows]) for p in PHASES},
        "gen_only_s": _median(gen),
        "tokens_per_step": _median([r["response/length_mean"] * r["batch/rows"] for r in rows]),
        "params_m": params / 1e6,
        "steps_timed": len(rows),
    }


def run_trl(model_path: str, prompts: list[str], steps: int, threads: int) -> dict | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        pf, out = Path(tmp) / "prompts.json", Path(tmp) / "trl.json"
        pf.write_text(json.dumps(prompts))
        script = Path(tmp) / "trl_bench.py"
        script.write_text(TRL_SCRIPT)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(
            [
                sys.executable,
                str(script),
                model_path,
                str(pf),
                str(steps + 1),
                str(out),
                str(threads),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        times = json.loads(out.read_text())["step_s"][1:]
    return {"step_s": _median(times), "steps_timed": len(times)}


def report(ours: dict, trl: dict | None, device: str) -> str:
    lines = [
        f"# rlpost bench ({device})",
        "",
        f"anchor: launch/recipes/{ANCHOR.name} — small model ({ours['params_m']:.1f}M params), "
        f"8 prompts x 8 samples, 128 new tokens, GRPO",
        f"startup (actors up): {ours['startup_s']:.1f} s",
        "",
        "| | s/step | vs pure generation | vs TRL |",
        "| --- | --- | --- | --- |",
    ]
    gen = ours["gen_only_s"]
    trl_s = trl.get("step_s") if trl else None
    vs_trl = f"{trl_s / ours['step_s']:.2f}x faster" if trl_s else "n/a"
    lines.append(f"| rlpost | {ours['step_s']:.2f} | {ours['step_s'] / gen:.2f}x | {vs_trl} |")
    lines.append(f"| pure generation (same samples, vLLM) | {gen:.2f} | 1.00x | |")
    if trl_s:
        lines.append(f"| TRL GRPOTrainer | {trl_s:.2f} | {trl_s / gen:.2f}x | 1.00x |")
    elif trl and "error" in trl:
        lines.append(f"| TRL GRPOTrainer | failed: {trl['error'].splitlines()[-1]} | | |")
    else:
        lines.append("| TRL GRPOTrainer | not installed (pip install '.[bench]') | | |")
    lines += [
        "",
        "per-phase median seconds: " + ", ".join(f"{p} {v:.2f}" for p, v in ours["phases"].items()),
        f"tokens generated per step: {ours['tokens_per_step']:.0f}; "
        f"steps timed: {ours['steps_timed']} (the first step is a warm-up and not counted)",
    ]
    return "\n".join(lines)


def run_sync(presets: list[str], reps: int, overrides: list[str]) -> list[dict]:
    """Seconds per weight sync, object store vs collective group, on the same actors: one
    learner rank and one engine per model, the two transports interleaved so load drift on a
    shared machine hits both alike. Every sync is verified (checksums) at the end."""

    out = []
    for preset in presets:
        cfg = load_config(
            ANCHOR, [f"model.path=tiny:{preset}", "rollout.sync_transport=object_store", *overrides]
        )
        needs = Needs(reward=False)
        actors = start_actors(cfg, needs, use_ref=False)
        try:
            store = actors.weight_sync
            coll_cfg = dataclasses.replace(
                cfg, rollout=dataclasses.replace(cfg.rollout, sync_transport="collective")
            )
            coll = WeightSync(coll_cfg, actors.learners, actors.rollout)
            times: dict[str, list[float]] = {"object_store": [], "collective": []}
            checks = {}
            version = 0
            for i in range(reps + 1):  # the first round warms up both paths and is not counted
                for name, ws in (("object_store", store), ("collective", coll)):
                    version += 1
                    m = ws.sync(version, verify=i == reps)
                    if i:
                        times[name].append(m["sync/seconds"])
                    if i == reps:
                        checks[name] = m["sync/checksum_mismatch"]
            out.append(
                {
                    "preset": preset,
                    "params_m": actors.learners.num_params / 1e6,
                    "mb": coll.nbytes / 2**20,
                    "buckets": len(coll.wire_plan),
                    "median": {k: _median(v) for k, v in times.items()},
                    "min": {k: min(v) for k, v in times.items()},
                    "mismatch": checks,
                }
            )
        finally:
            actors.shutdown()
    ray.shutdown()
    return out


def sync_report(rows: list[dict], reps: int, device: str) -> str:
    lines = [
        f"# rlpost bench --sync ({device})",
        "",
        f"one learner rank, one vLLM engine, {reps} syncs per transport, interleaved; bf16 on the "
        "wire; seconds from the learner's export/gather to every engine loaded",
        "",
        "| model | params | MB per sync | buckets | object store s (median / min) | "
        "collective s (median / min) | checksum mismatches (store, coll.) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        med, lo, bad = r["median"], r["min"], r["mismatch"]
        lines.append(
            f"| {r['preset']} | {r['params_m']:.1f}M | {r['mb']:.0f} | {r['buckets']} | "
            f"{med['object_store']:.3f} / {lo['object_store']:.3f} | "
            f"{med['collective']:.3f} / {lo['collective']:.3f} | "
            f"{bad['object_store']:.0f}, {bad['collective']:.0f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:

    device = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    )
    if args.sync:
        text = sync_report(
            run_sync(args.sync.split(","), args.steps, args.overrides), args.steps, device
        )
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_rlpost(args.steps, args.overrides, Path(tmp))
    trl = None
    if not args.no_trl:
        cfg = load_config(ANCHOR, args.overrides)
        tok = AutoTokenizer.from_pretrained(cfg.model.path)
        rows = load_prompts(cfg, tok, "train")
        prompts = [rows[i]["prompt"] for i in range(cfg.trainer.prompts_per_step)]
        trl = run_trl(cfg.model.path, prompts, args.steps, os.cpu_count() or 1)
    text = report(ours, trl, device)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="s/step on the anchor config vs pure generation vs TRL")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the anchor recipe")
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL side-by-side")
    p.add_argument("--out", default="", help="also write the report to this file")
    p.add_argument(
        "--sync",
        default="",
        metavar="PRESETS",
        help="time weight sync only, object store vs collective, on these tiny presets "
        "(e.g. small,llama-100m); --steps syncs per transport",
    )
    p.set_defaults(func=main)
