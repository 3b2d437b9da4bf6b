"""Rewards through the real runtime: a user file by path, an rm-nano ensemble (UWO), a server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlpost.models import tiny
from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "launch/recipes/grpo_tiny.yaml")
USER_REWARD = """
def score(prompts, completions, answer, **columns):
    # TRL signature, unchanged: partial credit for digits, full credit for the answer
    return [1.0 if str(a) in c else sum(ch.isdigit() for ch in c) / max(len(c), 1)
            for c, a in zip(completions, answer)]
"""


def test_rm_ensemble_uwo_with_a_verifier(run_cli, tmp_path):
    members = [str(tiny.ensure("rm-nano", seed=i)) for i in range(3)]
    run_cli(
        "train",
        RECIPE,
        f"reward.models=[{','.join(members)}]",
        "reward.ensemble.mode=uwo",
        "reward.ensemble.uwo_lambda=0.5",
        "reward.functions=[task:arithmetic]",
        "reward.weights=[1.0,0.5]",
        "trainer.steps=2",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=uwo",
    )
    rows = read_metrics(tmp_path / "uwo/metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1.0, 2.0]
    member_keys = [k for k in rows[0] if k.startswith("reward/rm/member")]
    assert len([k for k in member_keys if k.endswith("/mean")]) == 3, member_keys
    assert rows[0]["reward/rm/disagreement"] > 0  # three different random models disagree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reward_server_on_localhost(run_cli, tmp_path):
    reward = tmp_path / "my_reward.py"
    reward.write_text(USER_REWARD)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlpost.cli",
            "reward-server",
            "--reward",
            f"{reward}:score",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
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
            f"reward.remote=[http://127.0.0.1:{port}]",
            "trainer.steps=2",
            f"trainer.output_dir={tmp_path}",
            "trainer.run_name=remote",
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    rows = read_metrics(tmp_path / "remote/metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1.0, 2.0]
    assert all(r["reward/mean"] > 0 for r in rows)  # the digit credit is never exactly zero
