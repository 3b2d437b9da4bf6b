"""`rlpost sft`, `rlpost eval` and `rlpost compare` end to end: real Ray, vLLM and DeepSpeed.

One SFT run (module fixture) feeds both the SFT and the eval test; the compare test trains GRPO and
GRPO-D for 2 steps each on the nano model and checks the CSV, the plots and the report.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, address: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (what conftest's run_cli does, usable from a module fixture)."""
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"rlpost {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


@pytest.fixture(scope="module")
def sft_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    _cli(
        "sft",
        "launch/recipes/sft_tiny.yaml",
        f"trainer.output_dir={out}",
        "trainer.run_name=sft",
        "trainer.steps=6",
        address=ray_cluster.address,
    )
    return out / "sft"


def test_sft_lowers_the_loss_without_a_rollout_engine(sft_run):
    rows = read_metrics(sft_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss/sft"] for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    assert all("timing_s/sync" not in r for r in rows)  # no engine, so no weight sync
    assert all(r["sft/target_tokens_mean"] >= 2 for r in rows)  # answer + eos
    assert (sft_run / "final" / "config.json").exists()
    assert (sft_run / "final" / "tokenizer_config.json").exists()


def test_eval_of_a_saved_checkpoint_writes_the_json(sft_run, tmp_path, run_cli):
    out = tmp_path / "eval.json"
    proc = run_cli(
        "eval", "--model", str(sft_run), "--limit", "6", "--n", "3", "--k", "1,3",
        "--max-new-tokens", "6", "--out", str(out),
    )  # fmt: skip
    assert "eval result:" in proc.stdout
    res = json.loads(out.read_text())
    for key in ("accuracy", "accuracy_sampled", "pass@1", "pass@3", "reward_mean", "length_mean",
                "kl", "kl_k1", "diversity", "distinct_1", "distinct_2", "self_meteor",
                "cross_meteor", "tokens_per_s"):  # fmt: skip
        assert isinstance(res[key], float), key
    assert res["model"] == str(sft_run / "final")
    assert res["num_prompts"] == 6 and res["n"] == 3
    assert res["data"].startswith("task:arithmetic")
    assert 0.0 <= res["accuracy"] <= 1.0 and res["pass@3"] >= res["pass@1"]
    assert res["kl"] >= 0.0 and res["tokens_per_s"] > 0
    assert 1 <= res["length_mean"] <= 6 and len(res["examples"]) == 5


def test_compare_two_algorithms_writes_csv_plots_and_report(tmp_path, run_cli):
    proc = run_cli(
        "compare", "launch/compare/smoke_nano.yaml", "trainer.prompts_per_step=2",
        "--output-dir", str(tmp_path), timeout=900,
    )  # fmt: skip
    out = tmp_path / "compare-smoke_nano"
    assert f"report: {out / 'report.md'}" in proc.stdout
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    got = sorted((r["algorithm"], int(r["step"])) for r in rows)
    assert got == [("grpo", 0), ("grpo", 1), ("grpo", 2), ("grpo_d", 0), ("grpo_d", 1),
                   ("grpo_d", 2)]  # fmt: skip
    for r in rows:
        assert r["accuracy"] != "" and r["kl"] != "" and r["diversity"] != ""
        assert float(r["kl"]) >= 0.0
    trained = [r for r in rows if r["step"] == "2"]
    assert all(float(r["wall_s"]) > 0 for r in trained)
    for name in ("reward_vs_step", "accuracy_vs_step", "reward_vs_wall", "accuracy_vs_wall",
                 "accuracy_vs_kl"):  # fmt: skip
        png = out / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name
    report = (out / "report.md").read_text()
    assert "| grpo |" in report and "| grpo_d |" in report
    assert "## Who won what" in report and "![accuracy_vs_kl](accuracy_vs_kl.png)" in report
    metrics = read_metrics(out / "runs" / "grpo-s0" / "metrics.jsonl")
    assert all("eval/accuracy" in m and "eval/kl" in m for m in metrics)  # eval_every: 1
