"""Multi-node placement with real Ray: simulated nodes (ray.cluster_utils), real placement groups,
actors checked through Ray's state API. No mocks."""

from __future__ import annotations

import socket
import time

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from rlpost.config import config_from_dict  # noqa: E402
from rlpost.runtime.placement import (  # noqa: E402
    PlacementError,
    check_fits,
    cluster_nodes,
    cluster_resources,
    describe,
    make_plan,
    place,
)

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs for actors) + two 2-CPU nodes offering pool_a / pool_b."""
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_port": free_port(),
            "resources": {"head": 1},
        },
    )
    try:
        nodes = {
            "a": c.add_node(num_cpus=2, resources={"pool_a": 1000}),
            "b": c.add_node(num_cpus=2, resources={"pool_b": 1000}),
        }
        c.wait_for_nodes()
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield c, {k: n.node_id for k, n in nodes.items()}
    finally:
        ray.shutdown()
        c.shutdown()


@ray.remote
class Probe:
    def where(self) -> str:
        return ray.get_runtime_context().get_node_id()


def pinned_config():
    return config_from_dict(
        {
            "model": {"path": "x"},
            "rollout": {"engines": 2, "cpus_per_engine": 0.5},
            "learner": {"ranks": 2, "cpus_per_rank": 0.5},
            "placement": {
                "node_resources": {"rollout": "pool_a", "learner": "pool_b"},
                "aux_cpus": 0.25,
            },
        }
    )


def test_actors_land_where_the_plan_says(cluster):
    _, node_of = cluster
    plan = make_plan(pinned_config(), {"reference": 1, "reward": 1})
    check_fits(plan)  # against the live cluster: totals and per node
    assert cluster_resources()["CPU"] == 4.0
    placed = place(plan, timeout_s=30)
    try:
        actors = {}
        for b in plan.bundles:
            actors[b.name] = Probe.options(name=f"probe-{b.group}-{b.index}", **placed.options(b.group, b.index)).remote()  # fmt: skip
        reported = {name: ray.get(a.where.remote(), timeout=60) for name, a in actors.items()}
        # what the state API says about the same actors
        states = {
            s.name: s
            for s in list_actors(filters=[("class_name", "=", "Probe")], detail=True, timeout=30)
            if s.state == "ALIVE"
        }
        assert len(states) == 6
        for b in plan.bundles:
            s = states[f"probe-{b.group}-{b.index}"]
            assert s.node_id == reported[b.name] == placed.node_id(b.group, b.index)
            assert s.placement_group_id == placed.pg.id.hex()
        assert {reported[f"rollout[{i}]"] for i in range(2)} == {node_of["a"]}
        assert {reported[f"learner[{i}]"] for i in range(2)} == {node_of["b"]}
        # reference + reward are unpinned: anywhere but the CPU-less head
        assert {reported["reference[0]"], reported["reward[0]"]} <= set(node_of.values())
        table = describe(plan, placed)
        row = next(ln for ln in table.splitlines() if ln.split()[:2] == ["learner", "1"])
        assert row.split()[-1].endswith(node_of["b"][:6])
        for a in actors.values():
            ray.kill(a)
    finally:
        placed.remove()


def test_state_api_nodes_through_the_dashboard(cluster):
    c, node_of = cluster
    url = "http://" + c.head_node.address_info["webui_url"]
    nodes = {n.node_id: n for n in cluster_nodes(url)}
    assert set(node_of.values()) <= set(nodes)
    assert nodes[node_of["a"]].resources["pool_a"] == 1000
    assert nodes[node_of["b"]].resources["CPU"] == 2


def test_strict_spread_puts_each_bundle_on_its_own_node(cluster):
    _, node_of = cluster
    cfg = config_from_dict(
        {
            "model": {"path": "x"},
            "rollout": {"engines": 1, "cpus_per_engine": 1},
            "learner": {"ranks": 1, "cpus_per_rank": 1},
            "placement": {"strategy": "STRICT_SPREAD"},
        }
    )
    plan = make_plan(cfg, {})
    placed = place(plan, timeout_s=30)
    try:
        got = {placed.node_id("rollout", 0), placed.node_id("learner", 0)}
        assert got == set(node_of.values())
    finally:
        placed.remove()


def test_impossible_plans_fail_fast(cluster):
    too_big = config_from_dict(
        {"model": {"path": "x"}, "rollout": {"engines": 1, "cpus_per_engine": 3}}
    )
    t = time.monotonic()
    with pytest.raises(PlacementError, match=r"no node can hold bundle rollout\[0\] \(CPU=3\)"):
        place(make_plan(too_big, {}), timeout_s=30)
    gpus = config_from_dict({"model": {"path": "x"}, "learner": {"ranks": 2, "gpus_per_rank": 1}})
    with pytest.raises(PlacementError, match="short of GPU=2"):
        place(make_plan(gpus, {}), timeout_s=30)
    assert time.monotonic() - t < 5
    # resources taken by someone else: the check passes, the wait times out and names bundles
    hog = place(make_plan(pinned_config(), {}), timeout_s=30)  # takes 1 of pool_a's 2 CPUs
    try:
        three = config_from_dict(
            {
                "model": {"path": "x"},
                "rollout": {"engines": 3, "cpus_per_engine": 0.5},
                "learner": {"ranks": 1, "cpus_per_rank": 2},
                "placement": {"node_resources": {"rollout": "pool_a", "learner": "pool_b"}},
            }
        )
        t = time.monotonic()
        with pytest.raises(
            PlacementError,
            match=r"not ready after 2s \(PACK, 4 bundles: rollout×3.*free now CPU=2,",
        ):
            place(make_plan(three, {}), timeout_s=2)
        assert time.monotonic() - t < 10
    finally:
        hog.remove()
