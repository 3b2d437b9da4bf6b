"""`rlpost plan` and the argument wiring (no Ray cluster: --cluster / --node specs)."""

from __future__ import annotations

import argparse

import pytest

from rlpost.commands.launch.cli import add_cli, main

SPLIT = """\
model: {path: x}
algorithm: {kl: {beta: 0.0}}
rollout: {engines: 4, gpus_per_engine: 1}
learner: {ranks: 4, gpus_per_rank: 1}
placement: {node_resources: {rollout: rlpost_node_0, learner: rlpost_node_1}}
"""


@pytest.fixture()
def recipe(tmp_path):
    p = tmp_path / "split.yaml"
    p.write_text(SPLIT)
    return str(p)


def test_plan_prints_where_each_actor_lands(recipe, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main(["plan", recipe, "--node", "CPU=8,GPU=4,rlpost_node_0=1000",
               "--node", "CPU=8,GPU=4,rlpost_node_1=1000"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {tuple(ln.split()[:2]): ln.split()[-1] for ln in out.splitlines() if ln[:1].islower()}
    assert [rows[("rollout", str(i))] for i in range(4)] == ["~node0"] * 4
    assert [rows[("learner", str(i))] for i in range(4)] == ["~node1"] * 4
    assert out.rstrip().endswith("fits: yes")


def test_plan_refuses_with_exit_2_and_one_line(recipe, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main(["plan", recipe, "--cluster", "cpus=16,gpus=4,nodes=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("rlpost plan: placement:")
    assert "asked CPU=8.25, GPU=8" in err and "cluster has CPU=16, GPU=4" in err


def test_plan_overrides_and_bad_keys(recipe, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main(["plan", recipe, "placement.mode=colocate", "placement.node_resources={}",
               "--cluster", "cpus=16,gpus=4,nodes=1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "mode colocate" in out and "asks CPU=8.25, GPU=4" in out
    assert main(["plan", recipe, "placement.node_resources.critc=x", "--cluster", "cpus=4"]) == 2
    assert "placement.node_resources.critc: unknown group" in capsys.readouterr().err


def test_add_cli_registers_commands_with_handlers():
    parser = argparse.ArgumentParser(prog="rlpost")
    add_cli(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["submit", "r.yaml", "trainer.steps=2", "--address", "http://h:8265",
                           "--no-wait"])  # fmt: skip
    assert (a.recipe, a.overrides, a.address, a.no_wait) == (
        "r.yaml",
        ["trainer.steps=2"],
        "http://h:8265",
        True,
    )
    assert callable(a.func)
    for argv in (["jobs", "list"], ["jobs", "logs", "raysubmit_1", "-f"], ["plan", "r.yaml"],
                 ["launch", "slurm", "r.yaml", "--nodes", "2"],
                 ["launch", "kuberay", "r.yaml", "--image", "i"]):  # fmt: skip
        assert callable(parser.parse_args(argv).func)
