"""TRL's GRPOTrainer on the same model, prompts, group size and completion length as an anchor,
in a subprocess (its own threads and memory, no Ray), so the comparison is taken in the same
invocation as rlpost's figures. TRL generates with HF ``generate``; that is the point of the
generation-heavy anchor.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TRL_SCRIPT = r"""
import json, os, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_path, prompts_file, steps, out_file, threads, n, max_new = sys.argv[1:8]
torch.set_num_threads(int(threads))
prompts = json.load(open(prompts_file))
tok = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)

def reward(completions, **kw):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

times, lengths = [], []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t)
        with open(out_file + ".part", "w") as f:  # kept on a timeout; replaced whole, never torn
            json.dump({"step_s": times, "lengths": lengths}, f)
        os.replace(out_file + ".part", out_file)
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "completions/mean_length" in logs:
            lengths.append(logs["completions/mean_length"])

n = int(n)
args = GRPOConfig(output_dir=out_file + ".d", per_device_train_batch_size=len(prompts) * n,
                  num_generations=n, max_completion_length=int(max_new), max_steps=int(steps),
                  learning_rate=1e-6, logging_steps=1, report_to=[], save_strategy="no",
                  use_cpu=True, bf16=False, beta=0.04, temperature=1.0, seed=0,
                  dataloader_num_workers=0, gradient_accumulation_steps=1)
ds = Dataset.from_list([{"prompt": p} for p in prompts] * (int(steps) + 2))
trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
trainer.train()
json.dump({"step_s": times, "lengths": lengths}, open(out_file, "w"))
"""


def run_trl(
    model_path: str,
    prompts: list[str],
    steps: int,
    threads: int,
    n: int,
    max_new_tokens: int,
    timeout_s: float = 1800.0,
) -> dict:
    """s/step of TRL's GRPOTrainer (first step not counted), or ``skipped``/``error``. HF
    ``generate`` of long completions on a busy CPU can take far longer than rlpost's whole arm,
    so the run is bounded by ``timeout_s`` and a timeout is a result, not a hang."""
    try:
        import trl  # noqa: F401  - optional ('.[bench]'); only its presence is checked here
    except ImportError:
        return {"skipped": "not installed (pip install '.[bench]')"}
    with tempfile.TemporaryDirectory() as tmp:
        pf, out = Path(tmp) / "prompts.json", Path(tmp) / "trl.json"
        pf.write_text(json.dumps(prompts))
        script = Path(tmp) / "trl_bench.py"
        script.write_text(TRL_SCRIPT)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        argv = [model_path, str(pf), str(steps + 1), str(out), str(threads), str(n)]
        try:
            proc = subprocess.run(
                [sys.executable, str(script), *argv, str(max_new_tokens)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            done = json.loads(out.read_text())["step_s"] if out.exists() else []
            return {
                "error": f"timed out after {timeout_s:.0f} s, {len(done)} of {steps + 1} steps "
                "done" + (f" (first, warm-up step {done[0]:.1f} s)" if done else ""),
                "steps_done_s": done,
            }
        if proc.returncode < 0:
            return {"error": f"killed by signal {-proc.returncode} ({steps + 1} steps asked)"}
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        got = json.loads(out.read_text())
    times, lengths = got["step_s"][1:], got["lengths"][1:] or got["lengths"]
    return {
        "s_per_step": statistics.median(times) if times else None,
        "steps_timed": len(times),
        "completion_length_mean": statistics.mean(lengths) if lengths else None,
        "threads": threads,
    }
