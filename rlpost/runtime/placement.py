"""The resource plan: which actor gets which CPUs/GPUs, on which node, as one Ray placement group.

A ``Plan`` lists one ``Bundle`` per actor (group, index, cpus, gpus, custom resources). Bundles
map onto *slots*, the bundles of the Ray placement group: in ``split`` mode every actor has its
own slot; in ``colocate`` mode the GPU-using actors of different groups share one-GPU slots and
each asks for a fraction of that GPU (rollout engine i and learner rank i sit on the same GPU,
which is what CUDA-IPC weight sync and vLLM sleep/wake need).

Why one placement group for the whole plan, not one per group: Ray reserves a placement group
atomically, so a job either gets everything it asked for or nothing. With one group per actor
group, rollout engines can grab GPUs and then wait forever for learners that no longer fit
(two jobs can even deadlock each other). Colocation also needs rollout and learner actors in
the *same* bundle, i.e. the same placement group. Per-group node constraints are expressed
as custom resources on the bundles (``placement.node_resources``), which works under any
strategy.

``check_fits`` refuses a plan the cluster cannot hold before anything is reserved, so a bad
plan fails at once instead of hanging in ``ray.get(pg.ready())``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlpost.config import Config, ConfigError

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

GROUPS = ("rollout", "learner", "reference", "teacher", "critic", "reward")
OPTIONAL_GROUPS = ("reference", "teacher", "critic", "reward")
PIN_AMOUNT = 0.001  # of a pinning resource per bundle: nodes offering 1 host up to 1000 bundles
_EPS = 1e-6
_RAY_RES = 1e-4  # Ray keeps resource amounts to 4 decimals


class PlacementError(ConfigError):
    """The plan is malformed or the cluster cannot hold it; one line, printed by the CLI (exit 2)."""


@dataclass
class Bundle:
    """What one actor asks for. ``resources`` are custom resources (node pinning)."""

    group: str
    index: int
    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    slot: int = -1  # index of the placement-group bundle this actor is scheduled into

    @property
    def name(self) -> str:
        return f"{self.group}[{self.index}]"

    def demand(self) -> dict[str, float]:
        return _positive({"CPU": self.cpus, "GPU": self.gpus, **self.resources})


@dataclass
class Plan:
    bundles: list[Bundle]
    strategy: str
    mode: str = "split"

    def for_group(self, group: str) -> list[Bundle]:
        return [b for b in self.bundles if b.group == group]

    def groups(self) -> list[str]:
        return list(dict.fromkeys(b.group for b in self.bundles))

    def bundle(self, group: str, index: int) -> Bundle:
        for b in self.bundles:
            if b.group == group and b.index == index:
                return b
        have = ", ".join(f"{g}×{len(self.for_group(g))}" for g in self.groups())
        raise KeyError(f"plan has no actor {group}[{index}] (plan: {have})")

    def slots(self) -> list[dict[str, float]]:
        """The placement-group bundles Ray reserves (one per slot)."""
        n = 1 + max((b.slot for b in self.bundles), default=-1)
        out: list[dict[str, float]] = [{} for _ in range(n)]
        for b in self.bundles:
            for k, v in b.demand().items():
                out[b.slot][k] = out[b.slot].get(k, 0.0) + v
        if self.mode == "colocate":
            # A shared slot reserves whole GPUs: the co-tenants split the device between them.
            for s in out:
                if s.get("GPU", 0) > 0:
                    s["GPU"] = float(math.ceil(s["GPU"] - _EPS))
        return [{k: _round(v) for k, v in s.items()} for s in out]

    def members(self, slot: int) -> list[Bundle]:
        return [b for b in self.bundles if b.slot == slot]

    def totals(self) -> dict[str, float]:
        return _sum(self.slots())


# ------------------------------------------------------------------------------ building a plan


def _positive(d: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if v > 0}


def _round(v: float) -> float:
    return round(v, 4)


def _sum(items: list[dict[str, float]]) -> dict[str, float]:
    tot: dict[str, float] = {}
    for d in items:
        for k, v in d.items():
            tot[k] = _round(tot.get(k, 0.0) + v)
    return tot


def default_groups(cfg: Config, needs: Any) -> dict[str, int]:
    """How many actors each optional group has, from the algorithm's ``Needs`` (the runtime
    knows what an algorithm needs, never which algorithm it is); ``reference.enabled`` overrides."""
    reference = bool(needs.reference)
    if cfg.reference.enabled != "auto":
        reference = cfg.reference.enabled == "on"
    return {
        "reference": int(reference),
        "teacher": int(bool(needs.teacher)),
        "critic": cfg.critic.ranks if needs.critic else 0,
        "reward": int(bool(getattr(needs, "reward", True))),
        "rollout": cfg.rollout.engines if getattr(needs, "rollout", True) else 0,
    }


def _sizes(cfg: Config) -> dict[str, tuple[float, float, str]]:
    """group -> (cpus, gpus per actor, the config keys that set them)."""
    r, lr, p = cfg.rollout, cfg.learner, cfg.placement
    aux = "placement.aux_cpus/placement.aux_gpus"
    return {
        "rollout": (
            r.cpus_per_engine,
            r.gpus_per_engine * r.tensor_parallel,
            "rollout.cpus_per_engine/rollout.gpus_per_engine*rollout.tensor_parallel",
        ),
        "learner": (lr.cpus_per_rank, lr.gpus_per_rank, "learner.cpus_per_rank/gpus_per_rank"),
        "critic": (lr.cpus_per_rank, lr.gpus_per_rank, "learner.cpus_per_rank/gpus_per_rank"),
        "reference": (p.aux_cpus, p.aux_gpus, aux),
        "teacher": (p.aux_cpus, p.aux_gpus, aux),
        "reward": (p.aux_cpus, p.aux_gpus if cfg.reward.models else 0.0, aux),
    }


def make_plan(cfg: Config, groups: dict[str, int]) -> Plan:
    """Config (+ which optional groups exist) -> Plan. Raises PlacementError naming the key.

    ``groups`` maps optional group names (reference, teacher, critic, reward) to actor counts;
    missing names count 0. It may also set ``rollout`` / ``learner`` counts (e.g. rollout 0 for
    SFT); missing, they come from rollout.engines / learner.ranks (``default_groups`` makes this
    from an algorithm's ``Needs``).
    """
    opt = dict(groups)
    bad = sorted(set(opt) - set(GROUPS))
    if bad:
        raise PlacementError(
            f"make_plan: unknown group(s) {', '.join(bad)} (known: {', '.join(GROUPS)})"
        )
    counts = {"rollout": cfg.rollout.engines, "learner": cfg.learner.ranks}
    counts.update({g: int(opt.get(g, 0)) for g in OPTIONAL_GROUPS})
    counts.update({g: int(opt[g]) for g in ("rollout", "learner") if g in opt})
    sizes = _sizes(cfg)
    pins = cfg.placement.node_resources
    bundles: list[Bundle] = []
    for group in GROUPS:
        cpus, gpus, keys = sizes[group]
        if counts[group] < 0:
            raise PlacementError(f"make_plan: {group} count must be >= 0, got {counts[group]}")
        if cpus < 0 or gpus < 0:
            raise PlacementError(f"{keys}: negative resources for {group} ({cpus}, {gpus})")
        if counts[group] and cpus <= 0 and gpus <= 0:
            raise PlacementError(
                f"{keys}: {group} actors ask for no CPUs and no GPUs; "
                f"Ray cannot reserve an empty bundle"
            )
        res = {pins[group]: PIN_AMOUNT} if group in pins else {}
        for i in range(counts[group]):
            bundles.append(Bundle(group, i, float(cpus), float(gpus), dict(res)))
    mode = cfg.placement.mode
    if mode == "colocate":
        _colocate(bundles, sizes)
    else:
        for slot, b in enumerate(bundles):
            b.slot = slot
    return Plan(bundles=bundles, strategy=cfg.placement.strategy, mode=mode)


def _colocate(bundles: list[Bundle], sizes: dict[str, tuple[float, float, str]]) -> None:
    """Share one-GPU slots between the GPU groups; CPU-only actors keep their own slots.

    A group whose actors use g <= 1 GPU puts floor(1/g) actors on each GPU; each of the G
    GPU-using groups gets 1/G of every GPU, so an actor asks for g/G.
    """
    device_groups = [g for g in GROUPS if any(b.group == g and b.gpus > 0 for b in bundles)]
    if not device_groups:
        raise PlacementError(
            "placement.mode: colocate shares GPUs, but no group asks for GPUs "
            "(rollout.gpus_per_engine, learner.gpus_per_rank, placement.aux_gpus are 0)"
        )
    share = 1.0 / len(device_groups)
    n_dev = 0
    for group in device_groups:
        members = [b for b in bundles if b.group == group]
        g = members[0].gpus
        if g > 1 + _EPS:
            raise PlacementError(
                f"{sizes[group][2]}: colocate shares single GPUs, but each {group} actor asks "
                f"for {g:g} GPUs; use placement.mode=split (or <= 1 GPU per actor)"
            )
        per_gpu = max(1, int(math.floor(1.0 / g + _EPS)))
        for b in members:
            b.slot = b.index // per_gpu
            b.gpus = round(math.floor(g * share / _RAY_RES + _EPS) * _RAY_RES, 4)
        n_dev = max(n_dev, 1 + max(b.slot for b in members))
    nxt = n_dev
    for b in bundles:
        if b.gpus <= 0:
            b.slot = nxt
            nxt += 1


# ------------------------------------------------------------------------------ the cluster


@dataclass
class Node:
    """One node's total resources (CPU, GPU, custom, node:IP ...)."""

    node_id: str
    address: str
    resources: dict[str, float]


def use_ray_token_auth() -> bool:
    """Send the Ray auth token (``~/.ray/auth_token``) from this client, as ``ray.init`` does.

    Ray >= 2.5x clusters started where a token exists require it on every HTTP request (Jobs
    and state APIs), but Ray's HTTP clients only send it when RAY_AUTH_MODE=token is set in
    this process. An explicit RAY_AUTH_MODE is respected.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning speaks of starting a cluster, not of a client
    try:
        return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def cluster_resources() -> dict[str, float]:
    """Totals of the connected Ray cluster (``ray.cluster_resources()``)."""
    import ray  # `rlpost plan` describes plans without a cluster: Ray only where one is used

    if not ray.is_initialized():
        raise PlacementError("cluster_resources: Ray is not initialised (call ray.init first)")
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cluster_nodes(address: str | None = None) -> list[Node]:
    """Alive nodes: from the connected driver, or through the state API at ``address``
    (a dashboard URL ``http://HEAD:8265`` or a GCS address) without connecting a driver."""
    import ray  # `rlpost plan` describes plans without a cluster: Ray only where one is used

    if address is None and ray.is_initialized():
        return [
            Node(n["NodeID"], n.get("NodeManagerAddress", ""), dict(n.get("Resources", {})))
            for n in ray.nodes()
            if n.get("Alive")
        ]
    from ray.util.state import list_nodes

    use_ray_token_auth()
    try:
        states = list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "no cluster at that address"
        where = address or os.environ.get("RAY_ADDRESS") or "auto"
        raise PlacementError(
            f"cluster_nodes: cannot read nodes from Ray at {where}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return [Node(s.node_id, s.node_ip, dict(s.resources_total or {})) for s in states]


def parse_cluster_spec(spec: str) -> list[Node]:
    """``"cpus=16,gpus=8,nodes=2"`` -> 2 equal nodes (cpus and gpus are cluster totals, split
    evenly); any other ``name=amount`` is a custom resource total, split the same way.

    Node i also offers ``rlpost_node_<i>`` (1000), as on a cluster started by the
    ``rlpost launch slurm`` script, so plans pinned with placement.node_resources can be checked.
    """
    items: dict[str, float] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        key, sep, val = part.partition("=")
        try:
            items[key.strip()] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise PlacementError(f"--cluster: '{part}' must look like name=number (in '{spec}')")
    n = int(items.pop("nodes", 1))
    if n < 1:
        raise PlacementError(f"--cluster: nodes must be >= 1 (in '{spec}')")
    names = {"cpus": "CPU", "gpus": "GPU"}
    per = {names.get(k, k): v / n for k, v in items.items()}
    return [Node("", f"node{i}", {**per, f"rlpost_node_{i}": 1000.0}) for i in range(n)]


def parse_node_spec(spec: str, i: int) -> Node:
    """``"CPU=8,GPU=4,rlpost_node_1=1"`` -> one node with exactly those resources."""
    res: dict[str, float] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        key, sep, val = part.partition("=")
        try:
            res[key.strip()] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise PlacementError(f"--node: '{part}' must look like RESOURCE=number (in '{spec}')")
    return Node("", f"node{i}", res)


def local_nodes(num_cpus: int = 0) -> list[Node]:
    """This machine as a one-node cluster (what a local ``ray.init`` would offer)."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no CUDA means no GPUs
        gpus = 0
    cpus = num_cpus or os.cpu_count() or 1
    return [Node("", "localhost", _positive({"CPU": float(cpus), "GPU": float(gpus)}))]


# ------------------------------------------------------------------------------ fitting


def _fmt(d: dict[str, float]) -> str:
    if not d:
        return "nothing"
    keys = sorted(d, key=lambda k: (k not in ("CPU", "GPU"), k))
    return ", ".join(f"{k}={d[k]:g}" for k in keys)


def _fits(item: dict[str, float], cap: dict[str, float]) -> bool:
    return all(cap.get(k, 0.0) + _EPS >= v for k, v in item.items())


def _slot_name(plan: Plan, slot: int) -> str:
    return "+".join(b.name for b in plan.members(slot))


def _size_key(d: dict[str, float]) -> tuple[float, float, float]:
    return (d.get("GPU", 0.0), d.get("CPU", 0.0), sum(d.values()))


def _node_label(nodes: list[Node], n: Node) -> str:
    same = sum(1 for m in nodes if m.address == n.address) > 1
    return f"{n.address}/{n.node_id[:6]}" if (same and n.node_id) else (n.address or n.node_id[:8])


def pack(
    slots: list[dict[str, float]], nodes: list[Node], strategy: str, budget: int = 200_000
) -> tuple[list[int] | None, bool]:
    """Assign slots to nodes under ``strategy``. Returns (node index per slot or None, exact):
    ``exact`` is False when the search gave up, i.e. None then does not prove "impossible"."""
    caps = [dict(n.resources) for n in nodes]
    if not slots:
        return [], True
    if strategy == "STRICT_PACK":
        tot = _sum(slots)
        for j, cap in enumerate(caps):
            if _fits(tot, cap):
                return [j] * len(slots), True
        return None, True
    if strategy == "STRICT_SPREAD":
        return _match(slots, caps), True
    order = sorted(range(len(slots)), key=lambda i: _size_key(slots[i]), reverse=True)
    out: list[int] = [-1] * len(slots)
    steps = 0

    def dfs(k: int) -> bool | None:
        nonlocal steps
        if k == len(order):
            return True
        i = order[k]
        tried: list[dict[str, float]] = []
        # identical bundles are interchangeable: place each at or after its twin's node
        first = out[order[k - 1]] if k and slots[order[k - 1]] == slots[i] else 0
        for j, cap in enumerate(caps):
            if j < first:
                continue
            steps += 1
            if steps > budget:
                return None
            if cap in tried or not _fits(slots[i], cap):
                continue  # identical remaining capacity: same subtree as a node already tried
            tried.append(dict(cap))
            for r, v in slots[i].items():
                cap[r] -= v
            out[i] = j
            got = dfs(k + 1)
            for r, v in slots[i].items():
                cap[r] += v
            if got is None:
                return None
            if got:
                return True
        return False

    found = dfs(0)
    if found:
        if strategy == "SPREAD":
            out = _spread(slots, nodes) or out
        return out, True
    return None, found is False


def _match(slots: list[dict[str, float]], caps: list[dict[str, float]]) -> list[int] | None:
    """One slot per node (bipartite matching, augmenting paths)."""
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j, cap in enumerate(caps):
            if j in seen or not _fits(slots[i], cap):
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(slots)):
        if not augment(i, set()):
            return None
    out = [0] * len(slots)
    for j, i in owner.items():
        out[i] = j
    return out


def _spread(slots: list[dict[str, float]], nodes: list[Node]) -> list[int] | None:
    caps = [dict(n.resources) for n in nodes]
    count = [0] * len(caps)
    out = []
    for s in slots:
        fit = [j for j in range(len(caps)) if _fits(s, caps[j])]
        if not fit:
            return None
        j = min(fit, key=lambda j: count[j])
        count[j] += 1
        for r, v in s.items():
            caps[j][r] -= v
        out.append(j)
    return out


def _asked(plan: Plan) -> str:
    slots = plan.slots()
    big = max(range(len(slots)), key=lambda i: _size_key(slots[i]))
    return (
        f"asked {_fmt(plan.totals())} in {len(slots)} bundles for {len(plan.bundles)} actors "
        f"(biggest: {_slot_name(plan, big)} {_fmt(slots[big])})"
    )


def _has(available: dict[str, float], plan: Plan, nodes: list[Node] | None) -> str:
    keys = set(plan.totals()) | {"CPU", "GPU"}
    avail = {k: available.get(k, 0.0) for k in keys}
    where = f" on {len(nodes)} node{'s' * (len(nodes) != 1)}" if nodes else ""
    return f"cluster has {_fmt(avail) if avail else 'nothing'}{where}"


def _per_node(nodes: list[Node], keys: set[str]) -> str:
    return "; ".join(
        f"{_node_label(nodes, n)}: {_fmt({k: n.resources.get(k, 0.0) for k in sorted(keys)})}"
        for n in nodes
    )


def check_fits(
    plan: Plan, available: dict[str, float] | None = None, nodes: list[Node] | None = None
) -> None:
    """Raise PlacementError at once if the cluster cannot hold ``plan``.

    ``available``: cluster totals (e.g. ``ray.cluster_resources()``); ``nodes``: per-node
    totals, which also allow the per-node and strategy checks. Both None: read the connected
    Ray cluster. Checks totals, then that every bundle fits some node, then that the bundles
    can be arranged on the nodes under the plan's strategy.
    """
    if not plan.bundles:
        raise PlacementError("placement: the plan has no actors")
    if available is None and nodes is None:
        nodes = cluster_nodes()
    if available is None:
        available = _sum([n.resources for n in nodes or []])
    asked = plan.totals()
    short = {k: v - available.get(k, 0.0) for k, v in asked.items()}
    short = {k: _round(v) for k, v in short.items() if v > _EPS}
    if short:
        absent = sorted(k for k in short if k not in ("CPU", "GPU") and not available.get(k))
        hint = (
            f"; no node offers {', '.join(absent)} (named in placement.node_resources)"
            if absent
            else ""
        )
        raise PlacementError(
            f"placement: the cluster cannot hold this plan: {_asked(plan)}; "
            f"{_has(available, plan, nodes)}; short of {_fmt(short)}{hint}"
        )
    if not nodes:
        return
    slots = plan.slots()
    keys = set(asked) | {"CPU", "GPU"}
    for i, s in enumerate(slots):
        if not any(_fits(s, n.resources) for n in nodes):
            raise PlacementError(
                f"placement: no node can hold bundle {_slot_name(plan, i)} ({_fmt(s)}); "
                f"{_asked(plan)}; {_has(available, plan, nodes)}; nodes: {_per_node(nodes, keys)}"
            )
    assignment, exact = pack(slots, nodes, plan.strategy)
    if assignment is None and exact:
        raise PlacementError(
            f"placement: the bundles cannot be arranged on the nodes with strategy "
            f"{plan.strategy}: {_asked(plan)}; {_has(available, plan, nodes)}; "
            f"nodes: {_per_node(nodes, keys)}"
        )


# ------------------------------------------------------------------------------ placing


class PlacedPlan:
    """A plan reserved on the cluster as one placement group."""

    def __init__(self, plan: Plan, pg: PlacementGroup) -> None:
        self.plan = plan
        self.pg = pg

    def strategy(
        self, group: str, index: int, capture_child_tasks: bool = False
    ) -> PlacementGroupSchedulingStrategy:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        b = self.plan.bundle(group, index)
        return PlacementGroupSchedulingStrategy(
            placement_group=self.pg,
            placement_group_bundle_index=b.slot,
            placement_group_capture_child_tasks=capture_child_tasks,
        )

    def options(self, group: str, index: int) -> dict[str, Any]:
        """Keyword arguments for ``ActorClass.options(...)`` that put the actor in its slot."""
        b = self.plan.bundle(group, index)
        opts: dict[str, Any] = {
            "num_cpus": b.cpus,
            "num_gpus": b.gpus,
            "scheduling_strategy": self.strategy(group, index),
        }
        if b.resources:
            opts["resources"] = dict(b.resources)
        return opts

    def slot_nodes(self) -> list[str]:
        """Node id of every slot."""
        from ray.util.placement_group import placement_group_table

        table = placement_group_table(self.pg)
        where = table.get("bundles_to_node_id", {})
        return [where.get(i, "") for i in range(len(self.plan.slots()))]

    def node_id(self, group: str, index: int) -> str:
        return self.slot_nodes()[self.plan.bundle(group, index).slot]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.pg)


def _summary(plan: Plan) -> str:
    parts = []
    for g in plan.groups():
        bs = plan.for_group(g)
        parts.append(f"{g}×{len(bs)} ({_fmt(bs[0].demand())} each)")
    return ", ".join(parts)


def place(plan: Plan, timeout_s: float = 60, check: bool = True, name: str = "") -> PlacedPlan:
    """Reserve ``plan`` as one placement group and wait for it.

    ``check`` first runs ``check_fits`` against the live cluster (turn it off when an autoscaler
    will add nodes). Raises PlacementError if the group is not ready within ``timeout_s``
    (e.g. other jobs hold the resources), naming the bundles; the group is removed then.
    """
    import ray  # `rlpost plan` describes plans without a cluster: Ray only where one is used
    from ray.util.placement_group import placement_group, remove_placement_group

    if check:
        check_fits(plan)
    pg = placement_group(plan.slots(), strategy=plan.strategy, name=name)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    except BaseException:  # Ctrl-C / SIGTERM while waiting: the caller never sees the group
        remove_placement_group(pg)
        raise
    if not ready:
        remove_placement_group(pg)
        keys = set(plan.totals()) | {"CPU", "GPU"}
        free = ray.available_resources()
        raise PlacementError(
            f"placement: the placement group was not ready after {timeout_s:g}s "
            f"({plan.strategy}, {len(plan.slots())} bundles: {_summary(plan)}); "
            f"{_has(cluster_resources(), plan, None)}, free now "
            f"{_fmt({k: float(free.get(k, 0.0)) for k in sorted(keys)})} "
            f"(other jobs hold the rest; see `ray status`)"
        )
    return PlacedPlan(plan, pg)


def describe(plan: Plan, placed: PlacedPlan | None = None, nodes: list[Node] | None = None) -> str:
    """A table of actors: group, index, cpus, gpus, custom resources, slot, node.

    The node column is the real node when ``placed``; with ``nodes`` only it is the node the
    bundles would pack onto (marked ``~``: Ray decides at placement time).
    """
    node_of: list[str] = []
    header_node = "node"
    if placed is not None:
        import ray  # `rlpost plan` describes plans without a cluster: Ray only where one is used

        ids = placed.slot_nodes()
        known = [Node(n["NodeID"], n.get("NodeManagerAddress", ""), {}) for n in ray.nodes()]
        by_id = {n.node_id: _node_label(known, n) for n in known}
        node_of = [by_id.get(i, i[:8]) for i in ids]
    elif nodes:
        assignment, _ = pack(plan.slots(), nodes, plan.strategy)
        if assignment is not None:
            node_of = ["~" + _node_label(nodes, nodes[j]) for j in assignment]
            header_node = "node (predicted)"
    rows = [["group", "index", "cpus", "gpus", "resources", "slot", header_node]]
    for b in plan.bundles:
        res = ", ".join(f"{k}={v:g}" for k, v in b.resources.items()) or "-"
        node = node_of[b.slot] if node_of else "-"
        rows.append([b.group, str(b.index), f"{b.cpus:g}", f"{b.gpus:g}", res, str(b.slot), node])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        f"plan: mode {plan.mode}, strategy {plan.strategy}, {len(plan.bundles)} actors in "
        f"{len(plan.slots())} bundles, asks {_fmt(plan.totals())}"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
