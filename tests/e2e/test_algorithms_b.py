"""SuperHF and MCTS-DPO end to end (real Ray, vLLM, DeepSpeed on the nano model), and a user's
own algorithm file loaded by path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "launch/recipes"

DIGIT_REWARD = """
def score(prompts, completions, **columns):
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
"""

# A complete REINFORCE with a mean baseline, written against the public protocol only.
USER_ALGORITHM = """
import torch

from algorithms.base import Algorithm, Needs
from rlpost.objective import aggregate


class MyReinforce(Algorithm):
    name = "my_reinforce"

    def needs(self):
        return Needs(samples_per_prompt=self.cfg.rollout.n)

    def prepare(self, batch):
        scores = batch["scores"]
        batch["advantages"] = scores - scores.mean()
        return {"my/reward_mean": scores.mean().item()}

    def loss(self, logp, batch, counts):
        per_token = -batch["advantages"].unsqueeze(-1) * logp
        loss = aggregate(per_token, batch["response_mask"], "token-mean", **counts)
        return loss, {"loss/my_pg": loss.item()}
"""


def _run(run_cli, recipe: str, tmp_path: Path, name: str, *over: str) -> list[dict]:
    run_cli(
        "train",
        str(RECIPES / recipe),
        f"trainer.output_dir={tmp_path}",
        f"trainer.run_name={name}",
        *over,
    )
    rows = read_metrics(tmp_path / name / "metrics.jsonl")
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"step {row['step']}: {k} = {v}"
    return rows


def _advances(rows: list[dict], steps: int) -> None:
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["policy_version"] for r in rows] == [float(s) for s in range(1, steps + 1)]


def test_superhf_tiny(run_cli, tmp_path):
    rows = _run(run_cli, "superhf_tiny.yaml", tmp_path, "superhf")
    _advances(rows, 2)
    for r in rows:
        assert r["batch/rows"] == 4.0 == r["superhf/kept_rows"]  # top-1 of 4 per prompt, 4 prompts
        assert r["superhf/kept_reward_mean"] >= r["reward/mean"]
        assert 0.0 <= r["superhf/meteor_similarity"] <= 1.0
        assert r["loss/sft"] > 0 and "loss/kl" in r and r["kl/beta"] == pytest.approx(0.1)
    assert any(r["grad_norm"] > 0 for r in rows)


def test_mcts_dpo_tiny(run_cli, tmp_path):
    rows = _run(run_cli, "mcts_dpo_tiny.yaml", tmp_path, "mcts")
    _advances(rows, 2)
    for r in rows:
        assert r["mcts/tree_size"] >= 2  # the root is expanded into >= 2 distinct steps or more
        assert r["mcts/max_depth"] <= 2.0
        # the step at the depth limit finishes the answer: simulations end where the verifier
        # scores (all of them here, as the arithmetic verifier scores every answer)
        assert r["mcts/sim_verified_frac"] > 0.5 and r["mcts/simulations"] >= 4
        assert r["mcts/pairs_per_prompt"] <= r["mcts/path_len"] <= 2.0  # pairs only on the path
        assert r["batch/rows"] == 2 * max(r["dpo/pairs"], 1.0)
        assert r["mcts/q_margin_max"] >= r["mcts/q_margin_min"] >= 0.0
        assert 0.0 < r["mcts/self_eval_mean"] < 1.0
    assert any(r["mcts/pairs_per_prompt"] > 0 for r in rows)
    assert any(r["grad_norm"] > 0 for r in rows)


def test_user_algorithm_file_by_path(run_cli, tmp_path):
    algo = tmp_path / "my_algo.py"
    algo.write_text(USER_ALGORITHM)
    reward = tmp_path / "digit_reward.py"
    reward.write_text(DIGIT_REWARD)
    rows = _run(
        run_cli,
        "grpo_tiny.yaml",
        tmp_path,
        "mine",
        f"algorithm.name={algo}:MyReinforce",
        f"reward.functions=[{reward}:score]",
        "trainer.steps=1",
    )
    _advances(rows, 1)
    assert "loss/my_pg" in rows[0] and "my/reward_mean" in rows[0]
