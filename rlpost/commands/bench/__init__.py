"""`rlpost bench`: where every second of a training step goes, in one invocation (this
machine's timings drift between runs, so only figures from one run are compared).

Per anchor recipe (`bench_small`: 128 new tokens; `bench_gen512`: 512, generation-heavy):
rlpost's s/step with its phases and start-up, synchronous and one step off
(`trainer.off_policy_steps` 0 and 1), the peak memory of every actor, the floor (bare vLLM
generation of the same samples + bare PyTorch reference forward + policy forward/backward/AdamW
on the very batch trained, in the learner's thread configuration) and TRL's GRPOTrainer on the
same model and prompts. Writes a markdown report and a JSON file next to it.
`rlpost bench --sync small,llama-100m`: weight-sync seconds of the object store and the
collective transport on the same actors, per model size.

A benchmark prints a report; no test asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from algorithms.base import Needs, build_algorithm
from rlpost import resources
from rlpost.commands.bench import floor as floor_mod
from rlpost.commands.bench import probe, report
from rlpost.commands.bench.trl_arm import run_trl
from rlpost.config import load_config
from rlpost.data import load_prompts
from rlpost.models.hf import load_tokenizer
from rlpost.runtime.cluster import start_actors
from rlpost.runtime.sync import WeightSync
from rlpost.tracking import read_metrics
from rlpost.trainer import Trainer

ANCHORS = {"small": "bench_small.yaml", "gen512": "bench_gen512.yaml"}
ANCHOR = resources.launch_file("recipes", ANCHORS["small"])  # the --sync mode's model shape
PHASES = ["generate", "score", "train", "sync"]
ASYNC_KEY = "trainer.off_policy_steps"


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _learner_threads(cfg: Any) -> int:
    """As ``LearnerWorker`` sets them: torch_threads, else the rank's CPUs."""
    return cfg.learner.torch_threads or max(1, int(round(cfg.learner.cpus_per_rank)))


def run_rlpost(
    recipe: Path, steps: int, overrides: list[str], out_dir: Path, gen_reps: int
) -> tuple[dict, dict | None]:
    """Train the recipe for one warm-up step + ``steps`` timed ones; then, on the same engine,
    time bare generation of a step's samples and read every actor's peak memory. Returns the
    arm's figures and the batch the floor is measured on (rows of prompt + completion ids)."""
    cfg = load_config(
        recipe,
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
        startup = getattr(trainer, "startup_s", None) or time.time() - t0
        trainer.fit()
        rows = read_metrics(trainer.run_dir / "metrics.jsonl")[1:]
        # Bare generation of the same samples (prompts, n, max tokens) on the same engine.
        prompts = trainer.sampler.next(cfg.trainer.prompts_per_step)
        ids = [p["prompt_ids"] for p in prompts]
        gen, samples = [], None
        for _ in range(max(1, gen_reps)):
            t = time.perf_counter()
            samples, _ = trainer.rollout.generate(ids, cfg.rollout.n, seeds=list(range(len(ids))))
            gen.append(time.perf_counter() - t)
        memory = probe.actor_peak_memory()
        params = trainer.learners.num_params
    finally:
        trainer.shutdown()
        ray.shutdown()
    arm = {
        "startup_s": startup,
        "s_per_step": _median([r["timing_s/step"] for r in rows]),
        "phases": {p: _median([r.get(f"timing_s/{p}", 0.0) for r in rows]) for p in PHASES},
        "generation_s": _median(gen),
        "tokens_per_step": _median([r["response/length_mean"] * r["batch/rows"] for r in rows]),
        "response_length_mean": _median([r["response/length_mean"] for r in rows]),
        "staleness_mean": _median([r[k] for r in rows if (k := "rollout/staleness_mean") in r])
        if any("rollout/staleness_mean" in r for r in rows)
        else None,
        "peak_memory": memory,
        "params_m": params / 1e6,
        "steps_timed": len(rows),
    }
    batch = {"rows": floor_mod.sample_rows(ids, samples or []), "generation_s": arm["generation_s"]}
    return arm, batch


def measure_anchor_floor(cfg: Any, batch: dict, reps: int) -> dict:
    """The floor on the batch the sync arm generated, in the learner's thread configuration."""
    lrn = cfg.learner
    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    ids, attn = floor_mod.pad_rows(batch["rows"], tok.pad_token_id or 0)
    policy_threads, ref_threads = _learner_threads(cfg), lrn.torch_threads or 1
    out = floor_mod.measure_floor(
        cfg.model.path,
        ids,
        attn,
        policy_threads=policy_threads,
        ref_threads=ref_threads,
        micro=lrn.micro_batch_size,
        mini=lrn.mini_batch_size,
        autocast_bf16=lrn.autocast == "bf16",
        lr=lrn.lr,
        grad_clip=lrn.grad_clip,
        reps=reps,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    out.update(
        generation_s=batch["generation_s"], policy_threads=policy_threads, ref_threads=ref_threads
    )
    out["floor_s_per_step"] = floor_mod.floor_s_per_step(out["generation_s"], out, lrn.epochs)
    return out


def bench_anchor(name: str, args: argparse.Namespace, steps: int, reps: int) -> dict:
    """Every arm of one anchor: rlpost sync and one step off (an arm the config refuses, e.g. an
    on-policy algorithm, is reported with its error), the floor on the sync arm's batch, TRL on
    the same prompts."""
    recipe = resources.launch_file("recipes", ANCHORS[name])
    cfg = load_config(recipe, args.overrides)
    arms: list[dict] = []
    floor_batch = None
    for k in (0, 1) if not args.no_async else (0,):
        extra = [f"{ASYNC_KEY}={k}"]
        print(f"[bench] {name}: rlpost, off_policy_steps={k}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                arm, batch = run_rlpost(recipe, steps, [*args.overrides, *extra], Path(tmp), reps)
            except Exception as e:  # noqa: BLE001 - one failed arm must not lose the others
                arms.append({"off_policy_steps": k, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
        arm["off_policy_steps"] = k
        arms.append(arm)
        floor_batch = floor_batch or batch
    params = next((a["params_m"] for a in arms if "params_m" in a), float("nan"))
    floor: dict[str, Any]
    if args.no_floor:
        floor = {"skipped": "--no-floor"}
    elif floor_batch is None or not floor_batch["rows"]:
        floor = {"skipped": "no rlpost arm ran"}
    else:
        print(f"[bench] {name}: floor", flush=True)
        floor = measure_anchor_floor(cfg, floor_batch, reps)
    trl: dict[str, Any]
    if args.no_trl:
        trl = {"skipped": "--no-trl"}
    else:
        print(f"[bench] {name}: TRL", flush=True)
        tok = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        rows = load_prompts(cfg, tok, "train")
        prompts = [rows[i]["prompt"] for i in range(cfg.trainer.prompts_per_step)]
        trl = run_trl(
            cfg.model.path,
            prompts,
            steps,
            os.cpu_count() or 1,
            cfg.rollout.n,
            cfg.rollout.max_new_tokens,
            args.trl_timeout,
        )
    return {
        "recipe": f"launch/recipes/{recipe.name}",
        "params_m": params,
        "prompts_per_step": cfg.trainer.prompts_per_step,
        "n": cfg.rollout.n,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "torch_threads": _learner_threads(cfg),
        "autocast": cfg.learner.autocast,
        "epochs": cfg.learner.epochs,
        "arms": arms,
        "floor": floor,
        "trl": trl,
    }


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
        actors = start_actors(cfg, needs, functools.partial(build_algorithm, cfg))
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


def _device() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"


def _write(text: str, out: str, data: dict | None = None) -> None:
    """The report to ``out`` and, when given, the JSON next to it (``bench.md`` → ``bench.json``)."""
    print(text)
    if not out:
        return
    path = Path(out)
    path.write_text(text if text.endswith("\n") else text + "\n")
    if data is not None:
        path.with_suffix(".json").write_text(
            json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
        )
        print(f"[bench] wrote {path} and {path.with_suffix('.json')}")


def main(args: argparse.Namespace) -> int:
    if args.sync:
        rows = run_sync(args.sync.split(","), args.steps, args.overrides)
        _write(sync_report(rows, args.steps, _device()), args.out)
        return 0
    steps = 1 if args.quick else args.steps
    reps = 1 if args.quick else 2
    names = [n.strip() for n in args.anchors.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANCHORS]
    if unknown:
        raise SystemExit(f"--anchors: unknown {unknown} (known: {', '.join(ANCHORS)})")
    result: dict[str, Any] = {
        "device": _device(),
        "commit": probe.commit_hash(Path(__file__).resolve().parents[3]),
        "machine_start": probe.machine_state(),
        "torch_threads_driver": torch.get_num_threads(),
        "steps": steps,
        "quick": args.quick,
        "overrides": args.overrides,
        "anchors": {},
    }
    for name in names:
        result["anchors"][name] = bench_anchor(name, args, steps, reps)
    result["machine_end"] = probe.machine_state()
    _write(report.markdown(result), args.out, report.to_json(result))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="s/step of the anchors vs the machine's floor, sync vs async, vs TRL"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides of every anchor recipe")
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    p.add_argument(
        "--anchors",
        default=",".join(ANCHORS),
        help=f"comma-separated anchors to run (default all: {', '.join(ANCHORS)})",
    )
    p.add_argument("--no-trl", action="store_true", help="skip the TRL side-by-side")
    p.add_argument(
        "--trl-timeout",
        type=float,
        default=1800.0,
        help="seconds TRL may take per anchor (reported as timed out beyond)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the bare PyTorch floor")
    p.add_argument(
        "--no-async", action="store_true", help="skip the off_policy_steps=1 (one step off) arm"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="development run: 1 timed step, 1 timed repetition of the floor and of generation",
    )
    p.add_argument(
        "--out", default="", help="write the report here and the JSON next to it (x.md → x.json)"
    )
    p.add_argument(
        "--sync",
        default="",
        metavar="PRESETS",
        help="time weight sync only, object store vs collective, on these tiny presets "
        "(e.g. small,llama-100m); --steps syncs per transport",
    )
    p.set_defaults(func=main)
