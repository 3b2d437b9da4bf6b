"""`rlpost submit` against a real Ray head started with `ray start --head` (dashboard on, so the
Jobs API and its agent run), through the command line, no mocks.

The head runs as our own child process (`ray start --block`) on free ports with its own temp
dir. It is stopped by signalling that process and its process group, not with `ray stop`:
`ray stop` ends every Ray process of the user on the machine, including other test sessions'.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def env_for_ray() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"  # the job's `rlpost` / `python` are this venv's
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster with 4 CPUs; yields the dashboard URL."""
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env, nm, om = free_ports(9)
    temp = tempfile.mkdtemp(prefix="rlp-", dir="/tmp")  # short: Ray's socket paths must fit
    log = open(Path(temp) / "ray-start.log", "w")  # noqa: SIM115 - closed in the finaliser
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "4", "--num-gpus", "0",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--include-dashboard", "true", "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(rt_env), "--node-manager-port", str(nm),
        "--object-manager-port", str(om), "--temp-dir", temp, "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env_for_ray(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_jobs_api(url, proc, Path(temp) / "ray-start.log")
        yield url
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_jobs_api(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: `ray start --block` then ends the processes it started; SIGKILL what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the head's own process group only
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def rlpost(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (`python -m rlpost.commands.launch` = the launch commands of `rlpost`)."""
    return subprocess.run(
        [sys.executable, "-m", "rlpost.commands.launch", *args],
        cwd=cwd,
        env=env_for_ray(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_id_of(out: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith("submitted "))
    return line.split()[1].rstrip(":")


def test_submit_logs_list_stop_with_a_trivial_entrypoint(head, tmp_path):
    (tmp_path / "hello.txt").write_text("shipped with the working dir\n")
    r = rlpost("submit", "--address", head, "--working-dir", str(tmp_path),
               "--entrypoint", "python -c \"print('hello', open('hello.txt').read().strip())\"")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    job = job_id_of(r.stdout)
    assert "hello shipped with the working dir" in r.stdout  # followed logs
    assert r.stdout.rstrip().endswith(f"job {job} SUCCEEDED")

    r = rlpost("jobs", "list", "--address", head)
    assert r.returncode == 0
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(job))
    assert row.split()[1] == "SUCCEEDED"
    r = rlpost("jobs", "logs", job, "--address", head)
    assert "hello shipped with the working dir" in r.stdout

    # a failing job: exit code 1 and FAILED
    r = rlpost("submit", "--address", head, "--working-dir", str(tmp_path),
               "--entrypoint", "python -c 'import sys; print(\"bye\"); sys.exit(3)'")  # fmt: skip
    assert r.returncode == 1 and r.stdout.rstrip().endswith("FAILED"), r.stdout + r.stderr

    # --no-wait returns at once; stop ends the job
    r = rlpost("submit", "--address", head, "--working-dir", str(tmp_path), "--no-wait",
               "--entrypoint", "python -c 'import time; time.sleep(120)'")  # fmt: skip
    assert r.returncode == 0 and "rlpost jobs stop" in r.stdout
    job = job_id_of(r.stdout)
    r = rlpost("jobs", "stop", job, "--address", head)
    assert r.returncode == 0 and r.stdout.strip().endswith("now STOPPED"), r.stdout + r.stderr
    r = rlpost("jobs", "status", job, "--address", head)
    assert r.stdout.split()[1] == "STOPPED"


PROBE = """\
import sys
from rlpost.config import load_config
from rlpost.registry import load_object

cmd, recipe, *overrides = sys.argv[1:]
cfg = load_config(recipe, overrides, validate_paths=False)
print("probe", cmd, cfg.trainer.steps, [load_object(s)(["x"]) for s in cfg.reward.functions])
"""


def test_submit_ships_recipe_and_user_files_from_outside(head, tmp_path):
    """A recipe and a reward file outside the working dir reach the job and load there."""
    wd, outside = tmp_path / "wd", tmp_path / "outside"
    wd.mkdir()
    outside.mkdir()
    (wd / "probe.py").write_text(PROBE)
    (wd / "inner.py").write_text("def score(c, **k):\n    return [1.5]\n")
    (outside / "ext-reward.py").write_text("def bonus(c, **k):\n    return [7.0]\n")
    (outside / "r.yaml").write_text(
        "model: {path: /not/needed}\nreward: {functions: [inner.py:score]}\n"
    )
    r = rlpost("submit", str(outside / "r.yaml"), "trainer.steps=5",
               f"reward.functions=inner.py:score,{outside / 'ext-reward.py'}:bonus",
               "--address", head, "--working-dir", ".", "--no-check",
               "--rlpost-cmd", "python probe.py", cwd=wd)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "probe train 5 [[1.5], [7.0]]" in r.stdout


def test_plan_against_the_live_cluster(head, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: x}\nrollout: {cpus_per_engine: 1}\nlearner: {ranks: 2}\n")
    r = rlpost("plan", str(recipe), "--address", head)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CPU=4" in r.stdout and "fits: yes" in r.stdout
    r = rlpost(
        "plan", str(recipe), "learner.ranks=4", "learner.micro_batch_size=2", "--address", head
    )
    assert r.returncode == 2 and "cluster has CPU=4" in r.stderr, r.stdout + r.stderr


GRPO = ROOT / "launch" / "recipes" / "grpo_tiny.yaml"


@pytest.mark.skipif(not GRPO.exists(), reason="needs the GRPO tiny recipe")
def test_submit_grpo_tiny_end_to_end(head, tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run(
        [str(BIN / "rlpost"), "submit", "launch/recipes/grpo_tiny.yaml", "trainer.steps=2",
         f"trainer.output_dir={out}", "trainer.run_name=submitted", "--address", head],
        cwd=ROOT, env=env_for_ray(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(r.stdout[-5000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.rstrip().splitlines()[-1].endswith("SUCCEEDED")
    rows = [json.loads(ln) for ln in (out / "submitted" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in rows}) == [1, 2], rows
