"""make_plan / check_fits / pack / describe without Ray: plans are plain data."""

from __future__ import annotations

import time

import pytest

from algorithms.base import Needs
from rlpost.config import ConfigError, config_from_dict
from rlpost.runtime.placement import (
    Node,
    PlacementError,
    check_fits,
    default_groups,
    describe,
    make_plan,
    pack,
    parse_cluster_spec,
    parse_node_spec,
)


def cfg_of(**sections):
    tree = {"model": {"path": "x"}}
    tree.update(sections)
    return config_from_dict(tree)


GPU_SPLIT = dict(
    rollout={"engines": 2, "gpus_per_engine": 1, "tensor_parallel": 2, "cpus_per_engine": 4},
    learner={"ranks": 4, "gpus_per_rank": 1, "cpus_per_rank": 2},
)


def test_split_plan_counts_and_sizes():
    plan = make_plan(cfg_of(**GPU_SPLIT), {"reference": 1, "reward": 1})
    assert [(b.group, b.index) for b in plan.bundles] == [
        ("rollout", 0),
        ("rollout", 1),
        ("learner", 0),
        ("learner", 1),
        ("learner", 2),
        ("learner", 3),
        ("reference", 0),
        ("reward", 0),
    ]
    r = plan.for_group("rollout")[1]
    assert (r.cpus, r.gpus) == (4.0, 2.0)  # gpus_per_engine x tensor_parallel
    assert all((b.cpus, b.gpus) == (2.0, 1.0) for b in plan.for_group("learner"))
    ref = plan.for_group("reference")[0]
    assert (ref.cpus, ref.gpus) == (0.25, 0.0)  # placement.aux_cpus default
    assert [b.slot for b in plan.bundles] == list(range(8))  # split: own bundle each
    assert plan.totals() == {"CPU": 16.5, "GPU": 8.0}
    assert plan.strategy == "PACK"


def test_optional_groups_and_critic_ranks():
    cfg = cfg_of(critic={"ranks": 2}, placement={"aux_cpus": 0.5})
    plan = make_plan(cfg, {"critic": 2, "teacher": 1})
    assert [b.group for b in plan.bundles] == ["rollout", "learner", "teacher", "critic", "critic"]
    assert plan.for_group("teacher")[0].cpus == 0.5
    assert plan.for_group("critic")[1].cpus == cfg.learner.cpus_per_rank
    assert plan.for_group("reward") == []
    with pytest.raises(PlacementError, match="unknown group.*judge"):
        make_plan(cfg, {"judge": 1})


def test_default_groups_follow_needs_and_reference_switch():
    g = default_groups(cfg_of(reference={"enabled": "off"}), needs=Needs(reference=True))
    assert g["reference"] == 0 and g["reward"] == 1 and g["critic"] == 0 and g["rollout"] == 1
    cfg = cfg_of(reference={"enabled": "on"}, critic={"ranks": 3}, rollout={"engines": 2})
    g = default_groups(cfg, needs=_Needs())
    assert g == {"reference": 1, "teacher": 0, "critic": 3, "reward": 0, "rollout": 2}
    plan = make_plan(cfg, {**g, "rollout": 0})  # e.g. SFT: no engines
    assert [b.group for b in plan.bundles] == ["learner", "reference", "critic", "critic", "critic"]


class _Needs:
    reference = False  # overridden by reference.enabled=on
    teacher = False
    critic = True
    reward = False


def test_colocate_shares_gpus_fractionally():
    cfg = cfg_of(
        rollout={"engines": 4, "gpus_per_engine": 1},
        learner={"ranks": 4, "gpus_per_rank": 1},
        placement={"mode": "colocate"},
    )
    plan = make_plan(cfg, {"reward": 1})
    slots = plan.slots()
    # 4 one-GPU slots each holding rollout[i] + learner[i], then the CPU-only reward slot
    assert len(slots) == 5
    for i in range(4):
        assert {b.name for b in plan.members(i)} == {f"rollout[{i}]", f"learner[{i}]"}
        assert slots[i] == {"CPU": 2.0, "GPU": 1.0}
    assert all(b.gpus == 0.5 for b in plan.bundles if b.group in ("rollout", "learner"))
    assert slots[4] == {"CPU": 0.25}
    assert plan.totals() == {"CPU": 8.25, "GPU": 4.0}


def test_colocate_uneven_groups_and_half_gpus():
    cfg = cfg_of(
        rollout={"engines": 2, "gpus_per_engine": 1},
        learner={"ranks": 4, "gpus_per_rank": 0.5},
        placement={"mode": "colocate"},
    )
    plan = make_plan(cfg, {})
    # learners use half a GPU: two per GPU -> 2 slots; each learner asks 0.5/2 of its GPU
    assert [b.slot for b in plan.for_group("learner")] == [0, 0, 1, 1]
    assert [b.gpus for b in plan.for_group("learner")] == [0.25] * 4
    assert [b.gpus for b in plan.for_group("rollout")] == [0.5, 0.5]
    for s in range(2):
        assert sum(b.gpus for b in plan.members(s)) <= 1.0
    assert plan.slots() == [{"CPU": 3.0, "GPU": 1.0}] * 2


def test_colocate_refuses_multi_gpu_actors():
    cfg = cfg_of(
        rollout={"gpus_per_engine": 1, "tensor_parallel": 2},
        learner={"gpus_per_rank": 1},
        placement={"mode": "colocate"},
    )
    with pytest.raises(PlacementError, match="rollout.tensor_parallel.*asks for 2 GPUs"):
        make_plan(cfg, {})


def test_empty_bundle_is_refused_naming_the_key():
    cfg = cfg_of(placement={"aux_cpus": 0})
    with pytest.raises(PlacementError, match="placement.aux_cpus"):
        make_plan(cfg, {"reward": 1})


def test_node_resources_pin_groups_and_config_checks():
    cfg = cfg_of(placement={"node_resources": {"rollout": "pool_a", "learner": "pool_b"}})
    plan = make_plan(cfg, {"reward": 1})
    assert plan.for_group("rollout")[0].resources == {"pool_a": 0.001}
    assert plan.for_group("learner")[0].resources == {"pool_b": 0.001}
    assert plan.for_group("reward")[0].resources == {}
    with pytest.raises(ConfigError, match="placement.node_resources.rolout: unknown group"):
        cfg_of(placement={"node_resources": {"rolout": "a"}})
    with pytest.raises(ConfigError, match="placement.node_resources.learner"):
        cfg_of(placement={"node_resources": {"learner": ""}})


def test_check_fits_refuses_with_asked_and_available():
    plan = make_plan(cfg_of(**GPU_SPLIT), {"reference": 1, "reward": 1})
    with pytest.raises(PlacementError) as e:
        check_fits(plan, available={"CPU": 64.0, "GPU": 4.0})
    msg = str(e.value)
    assert "\n" not in msg
    assert "asked CPU=16.5, GPU=8 in 8 bundles" in msg
    assert "biggest: rollout[0] CPU=4, GPU=2" in msg
    assert "cluster has CPU=64, GPU=4" in msg
    assert "short of GPU=4" in msg
    check_fits(plan, available={"CPU": 16.5, "GPU": 8.0})  # exactly enough: no error


def test_check_fits_per_node_when_one_bundle_fits_nowhere():
    cfg = cfg_of(rollout={"gpus_per_engine": 1, "tensor_parallel": 8}, learner={"gpus_per_rank": 1})
    plan = make_plan(cfg, {})
    nodes = parse_cluster_spec("cpus=32,gpus=16,nodes=2")  # 2 nodes of 8 GPUs
    check_fits(plan, nodes=nodes)  # 8-GPU engine fits one node, learner the other
    nodes = parse_cluster_spec("cpus=32,gpus=16,nodes=4")  # 4 nodes of 4 GPUs
    with pytest.raises(PlacementError) as e:
        check_fits(plan, nodes=nodes)
    msg = str(e.value)
    assert "no node can hold bundle rollout[0] (CPU=1, GPU=8)" in msg
    assert "cluster has CPU=32, GPU=16 on 4 nodes" in msg
    assert "node0: CPU=8, GPU=4; node1: CPU=8, GPU=4" in msg


def test_check_fits_fragmentation_and_strategies():
    nodes = [Node("", f"n{i}", {"CPU": 8.0, "GPU": 4.0}) for i in range(2)]
    cfg = cfg_of(
        rollout={"engines": 2, "gpus_per_engine": 3}, learner={"ranks": 1, "gpus_per_rank": 2}
    )
    plan = make_plan(cfg, {})  # 3 + 3 + 2 = 8 GPUs on 2 x 4: totals fit, packing does not
    with pytest.raises(PlacementError, match="cannot be arranged on the nodes with strategy PACK"):
        check_fits(plan, nodes=nodes)
    small = make_plan(cfg_of(rollout={"engines": 2}, learner={"ranks": 2}), {})
    check_fits(small, nodes=nodes)
    small.strategy = "STRICT_SPREAD"  # 4 bundles, one per node, 2 nodes
    with pytest.raises(PlacementError, match="STRICT_SPREAD"):
        check_fits(small, nodes=nodes)
    small.strategy = "STRICT_PACK"
    check_fits(small, nodes=nodes)  # 4 CPUs on one 8-CPU node
    assert pack(small.slots(), nodes, "STRICT_PACK") == ([0, 0, 0, 0], True)
    assert pack(small.slots(), nodes, "SPREAD")[0] == [0, 1, 0, 1]


def test_pinned_plan_packs_onto_the_named_nodes():
    cfg = cfg_of(
        rollout={"engines": 4, "gpus_per_engine": 1},
        learner={"ranks": 4, "gpus_per_rank": 1},
        placement={"node_resources": {"rollout": "pool_a", "learner": "pool_b"}},
    )
    plan = make_plan(cfg, {})
    nodes = [
        parse_node_spec("CPU=8,GPU=4,pool_b=1", 0),
        parse_node_spec("CPU=8,GPU=4,pool_a=1", 1),
    ]
    assignment, exact = pack(plan.slots(), nodes, "PACK")
    assert exact and assignment == [1, 1, 1, 1, 0, 0, 0, 0]
    check_fits(plan, nodes=nodes)
    text = describe(plan, nodes=nodes)
    assert "node (predicted)" in text
    line = next(ln for ln in text.splitlines() if ln.split()[:2] == ["learner", "3"])
    assert line.split()[-1] == "~node0" and "pool_b=0.001" in line
    with pytest.raises(PlacementError, match="short of pool_a=0.004; no node offers pool_a "):
        check_fits(plan, nodes=[parse_node_spec("CPU=16,GPU=8,pool_b=1", 0)])


def test_pack_gives_up_without_refusing_and_is_fast():
    # a feasible but tight instance (60 GPUs asked, 60 exist on odd-sized nodes): the search
    # returns a valid packing or gives up (exact=False); it never claims "impossible" or hangs
    slots = [{"GPU": 1.0, "CPU": 1.0}] * 58 + [{"GPU": 2.0, "CPU": 1.0}]
    nodes = [Node("", f"n{i}", {"GPU": float(i % 5 + 1), "CPU": 5.0}) for i in range(20)]
    for budget in (10, 200_000):
        t = time.perf_counter()
        assignment, exact = pack(slots, nodes, "PACK", budget=budget)
        assert time.perf_counter() - t < 5
        if assignment is None:
            assert exact is False
            continue
        used = [0.0] * len(nodes)
        for slot, j in zip(slots, assignment):
            used[j] += slot["GPU"]
        assert all(u <= n.resources["GPU"] for u, n in zip(used, nodes))
    assert assignment is not None  # the full budget finds it


def test_describe_table_and_cluster_spec_parsing():
    plan = make_plan(cfg_of(), {"reward": 1})
    text = describe(plan)
    lines = text.splitlines()
    assert lines[0] == "plan: mode split, strategy PACK, 3 actors in 3 bundles, asks CPU=2.25"
    assert lines[1].split() == ["group", "index", "cpus", "gpus", "resources", "slot", "node"]
    assert lines[4].split() == ["reward", "0", "0.25", "0", "-", "2", "-"]
    nodes = parse_cluster_spec("cpus=16,gpus=8,nodes=2,ssd=2")
    assert [n.resources for n in nodes] == [
        {"CPU": 8.0, "GPU": 4.0, "ssd": 1.0, f"rlpost_node_{i}": 1000.0} for i in range(2)
    ]  # node i offers rlpost_node_<i>, as under the SLURM launcher
    with pytest.raises(PlacementError, match="--cluster: 'gpus' must look like name=number"):
        parse_cluster_spec("cpus=4,gpus")
    with pytest.raises(PlacementError, match="the plan has no actors"):
        check_fits(type(plan)([], "PACK"), available={"CPU": 1.0})
