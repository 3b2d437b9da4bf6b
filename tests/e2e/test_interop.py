"""A TRL, verl or OpenRLHF user's own rewards, data files and reward servers, trained unchanged.

Each test trains 2 steps of the tiny GRPO recipe from the command line, as a user would type it,
and reads back what metrics.jsonl (and samples.jsonl) recorded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "launch/recipes/grpo_tiny.yaml")
SHORT = ["trainer.steps=2", "rollout.n=2", "trainer.prompts_per_step=4"]

VERL_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    # verl's signature, unchanged; checks it is handed what verl would hand it
    assert data_source == "openai/gsm8k", data_source
    assert isinstance(extra_info, dict) and extra_info["split"] == "train", extra_info
    assert ground_truth == extra_info["answer"], (ground_truth, extra_info)
    return {"score": float(ground_truth in solution_str), "acc": 1.0,
            "index_seen": float(extra_info["index"])}
"""

OPENRLHF_REWARD = """
import torch

def reward_func(queries, prompts, labels, **kwargs):
    # OpenRLHF's signature and return value, unchanged
    assert all(q.startswith(p) for q, p in zip(queries, prompts))
    digits = torch.tensor([sum(ch.isdigit() for ch in q[len(p):]) / 16.0
                           for q, p in zip(queries, prompts)])
    hit = torch.tensor([float(str(y) in q[len(p):])
                        for q, p, y in zip(queries, prompts, labels)])
    return {"rewards": digits + hit, "scores": hit,
            "extra_logs": {"digit_frac": digits, "label_len": torch.tensor(
                [float(len(str(y))) for y in labels])}}
"""


def _questions(n: int = 8) -> list[tuple[str, str]]:
    return [(f"What is {i} + {i + 1}?", str(2 * i + 1)) for i in range(n)]


def test_trl_own_rewards_on_a_conversational_dataset(run_cli, tmp_path):
    pytest.importorskip("trl")
    data = tmp_path / "trl.jsonl"
    with data.open("w") as f:
        for q, a in _questions():
            row = {"prompt": [{"role": "user", "content": q}], "solution": a}
            f.write(json.dumps(row) + "\n")
    run_cli(
        "train",
        RECIPE,
        f"data.train={data}",
        "reward.functions=[trl.rewards:think_format_reward,trl.rewards:accuracy_reward]",
        *SHORT,
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=trl",
    )
    rows = read_metrics(tmp_path / "trl/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["reward/errors"] == 0
        assert 0 <= r["reward/think_format_reward/mean"] <= 1
        assert "reward/accuracy_reward/mean" in r
    samples = [json.loads(line) for line in (tmp_path / "trl/samples.jsonl").open()]
    answers = {a for _, a in _questions()}
    # accuracy_reward's own log_extra("solution", ...): the solution column reached it
    assert samples and set(samples[0]["samples/solution"]) <= answers
    assert len(samples[0]["samples/gold_parsed"]) == 8


def test_verl_parquet_and_compute_score(run_cli, tmp_path):
    import datasets

    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": a},
            "extra_info": {"split": "train", "index": i, "answer": a, "question": q},
        }
        for i, (q, a) in enumerate(_questions())
    ]
    data = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(data))
    reward = tmp_path / "verl_reward.py"
    reward.write_text(VERL_REWARD)
    run_cli(
        "train",
        RECIPE,
        f"data.train={data}",
        f"reward.functions=[{reward}:compute_score]",
        *SHORT,
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=verl",
    )
    out = read_metrics(tmp_path / "verl/metrics.jsonl")
    assert [r["step"] for r in out] == [1, 2]
    for r in out:
        assert r["reward/compute_score/acc"] == 1.0  # the dict's other keys are logged
        assert 0 <= r["reward/compute_score/index_seen"] <= 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openrlhf_reward_func_and_get_reward_server(run_cli, tmp_path):
    data = tmp_path / "openrlhf.jsonl"
    with data.open("w") as f:
        for q, a in _questions():
            f.write(json.dumps({"input": q, "label": a}) + "\n")
    reward = tmp_path / "reward_func.py"
    reward.write_text(OPENRLHF_REWARD)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rlpost.cli", "reward-server", "--reward",
         f"{reward}:reward_func", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() - t0 < 120, "reward server did not come up"
                time.sleep(0.5)
        run_cli(
            "train",
            RECIPE,
            f"data.train={data}",
            "data.prompt_key=input",
            "data.answer_key=label",
            f"reward.functions=[{reward}:reward_func]",
            f"reward.remote=[http://127.0.0.1:{port}/get_reward]",
            *SHORT,
            f"trainer.output_dir={tmp_path}",
            "trainer.run_name=openrlhf",
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    out = read_metrics(tmp_path / "openrlhf/metrics.jsonl")
    assert [r["step"] for r in out] == [1, 2]
    for r in out:
        assert r["reward/errors"] == 0
        assert 0 <= r["reward/reward_func/digit_frac"] <= 1  # extra_logs
        assert 1 <= r["reward/reward_func/label_len"] <= 2
        assert 0 <= r["reward/reward_func/scores"] <= 1  # scores
        assert "reward/remote0/mean" in r  # the /get_reward server scored too
        assert "reward/remote0/reward_func/digit_frac" in r  # and its extra_logs arrived
