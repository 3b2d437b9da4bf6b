"""`rlpost gpu-check` (and launch/gpu_check.sh): does the GPU path work, and how fast is it?

Two levels, because the GPU at hand for a quick check often has torch, transformers and a
DeepSpeed wheel but neither vLLM nor Ray:

- ``--learner-only``: the learner alone, in one process. The random-init model with the shape of
  Qwen2.5-0.5B (``rlpost make-tiny --preset qwen2-0.5b``; nothing downloaded), bf16, DeepSpeed
  ZeRO-2, chunked log-probs. Prints the loss on a small batch next to a CPU fp32 reference of the
  same model (they must agree), then tokens/s, MFU against the named bf16 peak, and peak memory.
  Imports no Ray and no vLLM.
- full stack (default): GRPO for a few steps through ``rlpost``'s own Trainer, (a) colocated with
  CUDA-IPC sync and vLLM sleep/wake, (b) split with the NCCL weight-update group (on one GPU NCCL
  refuses two ranks on one device, so the run says which transport it fell back to). Per mode:
  s/step by phase, generated tokens/s, learner MFU, sync seconds and share of the step,
  ``rollout/logprob_diff``, peak GPU memory per actor.

It prints a report; nothing asserts on time. Without a GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from rlpost.config import load_config
from rlpost.models import tiny
from rlpost.models.hf import causal_logprobs, load_model, load_tokenizer
from rlpost.runtime.perf import device_peak, mfu, train_flops_per_token
from rlpost.tracking import read_metrics
from rlpost.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
PRESET = "qwen2-0.5b"
REF_TOLERANCE = 2e-2  # bf16 GPU loss vs fp32 CPU loss, relative (bf16 keeps 8 mantissa bits)


# ---------------------------------------------------------------------- the loss
def nll(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Token-mean negative log-likelihood (every position after the first is a target), through
    the learner's own chunked log-probs: the [B, L, vocab] fp32 logits are never made whole."""
    lp = causal_logprobs(model, ids, torch.ones_like(ids), 1.0, chunk_tokens=chunk)
    return -lp[:, 1:].float().mean()


def make_batch(rows: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, vocab, (rows, length), generator=g)


def ds_config(micro: int, lr: float = 1e-6) -> dict:
    """One process, ZeRO-2, bf16, torch AdamW (no fused-op build needed on a fresh machine)."""
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "torch_adam": True}},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }


# ---------------------------------------------------------------------- learner only
def learner_only(args: argparse.Namespace) -> int:
    import deepspeed  # heavy; only this level needs it

    path = str(args.model or tiny.ensure(PRESET))
    vocab = len(load_tokenizer(path))
    small = make_batch(2, 64, vocab, seed=1)

    t0 = time.time()
    ref = load_model(path, dtype=torch.float32)
    with torch.no_grad():
        ref_loss = float(nll(ref, small))
    conf = ref.config
    del ref
    print(f"CPU fp32 reference loss on 2x64 tokens: {ref_loss:.5f} ({time.time() - t0:.1f}s)")

    with socket.socket() as sock:  # a one-process torch.distributed world on a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    deepspeed.init_distributed(dist_backend="nccl")
    torch.cuda.set_device(0)
    model = load_model(path, dtype=torch.bfloat16)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config(args.rows)
    )
    with torch.no_grad():
        gpu_loss = float(nll(engine.module, small.cuda()))
    rel = abs(gpu_loss - ref_loss) / abs(ref_loss)
    ok = rel < REF_TOLERANCE
    print(
        f"GPU bf16 loss on the same batch: {gpu_loss:.5f} (relative diff {rel:.2e}, "
        f"{'PASS' if ok else 'FAIL'} at {REF_TOLERANCE:g})"
    )

    batch = make_batch(args.rows, args.seq, vocab, seed=2).cuda()
    engine.train()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = nll(engine.module, batch)
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = args.rows * args.seq
    fpt = train_flops_per_token(params, conf.num_hidden_layers, conf.hidden_size, args.seq)
    peak, peak_name = device_peak()
    print(f"\n# rlpost gpu-check --learner-only ({torch.cuda.get_device_name()})")
    print(f"model: {path.name} ({params / 1e6:.0f}M params), bf16, DeepSpeed ZeRO-2, 1 process")
    print(
        f"batch: {args.rows} x {args.seq} tokens; steps timed: {len(times)} after {args.warmup} warm-up"
    )
    print(f"s/step (fwd+bwd+AdamW): {step_s:.3f}")
    print(f"tokens/s: {tokens / step_s:,.0f}")
    if peak:
        print(
            f"MFU: {mfu(fpt, tokens, step_s, peak):.1%} (peak: {peak_name}; {fpt / 1e9:.2f} GFLOP/token)"
        )
    else:
        print(f"MFU: n/a ({peak_name})")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated")
    print(f"loss vs CPU fp32 reference: {'PASS' if ok else 'FAIL'} ({rel:.2e})")
    print(f"wall time: {time.time() - t0:.0f}s")
    return 0 if ok else 1


# ---------------------------------------------------------------------- full stack
MODES = {
    "colocate (CUDA IPC, sleep/wake)": [
        "placement.mode=colocate",
        "rollout.gpus_per_engine=0.5",
        "learner.gpus_per_rank=0.5",
        "rollout.gpu_memory_utilization=0.3",
    ],
    "split (NCCL weight-update group)": [
        "placement.mode=split",
        "rollout.gpus_per_engine={split_gpus}",
        "learner.gpus_per_rank={split_gpus}",
        "rollout.gpu_memory_utilization={split_util}",
    ],
}
PHASES = ["generate", "score", "train", "sync"]


def run_mode(overrides: list[str], out: Path, steps: int) -> dict:

    cfg = load_config(
        ROOT / "launch/recipes/gpu_check.yaml",
        [
            f"trainer.steps={steps + 1}",
            f"trainer.output_dir={out}",
            "trainer.run_name=r",
            *overrides,
        ],
    )
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        transport = trainer.actors.weight_sync.transport
        trainer.fit()
        mem = {"engines": trainer.rollout.peak_memory_gb()}
        rows = read_metrics(trainer.run_dir / "metrics.jsonl")[1:]  # the first step warms up
    finally:
        trainer.shutdown()
        ray.shutdown()

    def med(key: str) -> float:
        vals = [r[key] for r in rows if key in r]
        return statistics.median(vals) if vals else float("nan")

    return {
        "transport": transport,
        "step_s": med("timing_s/step"),
        "phases": {p: med(f"timing_s/{p}") for p in PHASES},
        "gen_tokens_per_s": med("perf/gen_tokens_per_s"),
        "mfu": med("perf/mfu"),
        "sync_s": med("sync/seconds"),
        "logprob_diff": max(
            (r.get("rollout/logprob_diff", float("nan")) for r in rows), default=float("nan")
        ),
        "learner_mem_gb": med("perf/learner_peak_mem_gb"),
        "engine_mem_gb": mem["engines"],
        "steps": len(rows),
    }


def full_stack(args: argparse.Namespace) -> int:
    gpus = torch.cuda.device_count()
    fill = {"split_gpus": "1" if gpus >= 2 else "0.5", "split_util": "0.5" if gpus >= 2 else "0.3"}
    _, peak_name = device_peak()
    lines = [
        f"# rlpost gpu-check, full stack ({torch.cuda.get_device_name()} x{gpus}; peak: {peak_name})",
        "",
    ]
    if gpus < 2:
        lines.append(
            "one GPU: split mode cannot use NCCL (two ranks on one device); the run's transport column says what it used"
        )
    lines += [
        "",
        "| mode | transport | s/step | generate | score | train | sync (share) | gen tok/s | MFU | logprob_diff | learner peak GiB | engine peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, overrides in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            r = run_mode([o.format(**fill) for o in overrides], Path(tmp), args.steps)
        ph = r["phases"]
        lines.append(
            f"| {name} | {r['transport']} | {r['step_s']:.2f} | {ph['generate']:.2f} | {ph['score']:.2f} | "
            f"{ph['train']:.2f} | {r['sync_s']:.2f} ({r['sync_s'] / r['step_s']:.0%}) | "
            f"{r['gen_tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['logprob_diff']:.2e} | "
            f"{r['learner_mem_gb']:.1f} | {', '.join(f'{m:.1f}' for m in r['engine_mem_gb'])} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlpost gpu-check", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--learner-only", action="store_true", help="one process: HF + DeepSpeed, no Ray/vLLM"
    )
    p.add_argument(
        "--model", default="", help=f"model dir (default: the {PRESET} preset, built offline)"
    )
    p.add_argument("--rows", type=int, default=8, help="learner-only: sequences per step")
    p.add_argument("--seq", type=int, default=1024, help="learner-only: tokens per sequence")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="learner-only: untimed steps first")
    p.add_argument("--gradient-checkpointing", action="store_true")


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(
            "rlpost gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run"
        )
        return 2
    return learner_only(args) if args.learner_only else full_stack(args)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("gpu-check", help="learner-only or full-stack check on a GPU")
    add_arguments(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
