"""Data and environments through the real runtime: an offline task, and a multi-turn tool env."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
RECIPE = str(Path(__file__).resolve().parents[2] / "launch/recipes/grpo_tiny.yaml")


def test_grpo_on_offline_countdown_task_with_its_verifier(run_cli, tmp_path):
    run_cli(
        "train",
        RECIPE,
        "data.train=task:countdown",
        "trainer.steps=2",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=countdown",
    )
    rows = read_metrics(tmp_path / "countdown/metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1.0, 2.0]
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows)
    assert "reward/countdown/mean" in rows[0]  # the task's verifier was the reward


def test_multiturn_calculator_env_two_steps(run_cli, tmp_path):
    run_cli(
        "train",
        RECIPE,
        "data.env=calculator",
        "data.max_turns=2",
        "trainer.steps=2",
        "rollout.n=2",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=calc",
    )
    rows = read_metrics(tmp_path / "calc/metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1.0, 2.0]
    assert all(1.0 <= r["env/turns_mean"] <= 2.0 for r in rows)
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in rows)  # env tokens are masked out
