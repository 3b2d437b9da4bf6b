"""The GPU check's parts that need no GPU (log-prob chunking, loss, MFU arithmetic, its config),
checked on CPU; the GPU run itself is skipped, with the reason, where no GPU is present."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from rlpost.commands import gpu_check
from rlpost.config import load_config
from rlpost.models import tiny
from rlpost.runtime.perf import mfu, peak_tflops, train_flops_per_token

NO_GPU = "no CUDA GPU here: the learner-only check trains on a GPU (bf16, DeepSpeed ZeRO-2)"


@pytest.fixture(scope="module")
def qwen2_nano():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny.ensure("qwen2-nano"), dtype=torch.float32)


def test_nll_is_the_token_mean_cross_entropy(qwen2_nano):
    ids = gpu_check.make_batch(2, 16, 1000, seed=1)
    logits = qwen2_nano(input_ids=ids).logits
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    with torch.no_grad():
        assert float(gpu_check.nll(qwen2_nano, ids, chunk=5)) == pytest.approx(
            float(by_hand), abs=1e-5
        )


def test_mfu_arithmetic_by_hand():
    # 6·N + 12·layers·hidden·seq = 600 + 12·2·8·16 = 3672 FLOPs per token
    assert train_flops_per_token(100, 2, 8, 16) == 3672
    # 1e12 FLOPs/token × 10 tokens in 2 s on a 5 TFLOP/s peak = 100 %
    assert mfu(1e12, 10, 2.0, 5.0) == pytest.approx(1.0)
    assert peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert peak_tflops("NVIDIA L40")[0] is None  # not L4: whole-word match, unknown is said


def test_gpu_check_config_loads_for_both_modes():
    for overrides in gpu_check.MODES.values():
        fill = {"split_gpus": "1", "split_util": "0.5"}
        cfg = load_config(
            gpu_check.ROOT / "launch/recipes/gpu_check.yaml",
            ["model.path=tiny:qwen2-nano", *(o.format(**fill) for o in overrides)],
        )
        assert cfg.learner.zero_stage == 2 and cfg.rollout.dtype == "bfloat16"
        assert cfg.rollout.verify_sync
    ds = gpu_check.ds_config(micro=4)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check runs for real")
def test_gpu_check_without_a_gpu_says_so_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.commands.gpu_check", "--learner-only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_learner_only_check_matches_the_cpu_reference_on_a_gpu():
    args = argparse.Namespace(
        model=str(tiny.ensure("qwen2-nano")),
        rows=2,
        seq=64,
        steps=2,
        warmup=1,
        gradient_checkpointing=False,
    )
    assert gpu_check.learner_only(args) == 0
