"""Connect to Ray and bring up every actor group a run needs, placed by one resource plan.

The trainer gets back one ``Actors`` record and never sees placement groups or transports.
Knows actor groups and the algorithm's ``Needs``, never an algorithm by name.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from rlpost.config import Config
from rlpost.runtime import fault, placement
from rlpost.runtime.frozen import FrozenGroup
from rlpost.runtime.learner import LearnerGroup
from rlpost.runtime.reward import RewardGroup
from rlpost.runtime.rollout import RolloutGroup
from rlpost.runtime.sync import WeightSync

log = logging.getLogger("rlpost")


def connect_ray(cfg: Config) -> None:
    """An existing cluster when ray.address / RAY_ADDRESS is set, else a local one."""
    if ray.is_initialized():
        return
    t0 = time.perf_counter()
    addr = cfg.placement.ray_address or os.environ.get("RAY_ADDRESS", "")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}}
    if addr:
        ray.init(address=addr, runtime_env=env, log_to_driver=True)
    else:
        kw: dict[str, Any] = {"include_dashboard": False, "runtime_env": env}
        if cfg.placement.num_cpus:
            kw["num_cpus"] = cfg.placement.num_cpus
        ray.init(**kw)
    log.info("ray.init %.1fs", time.perf_counter() - t0)


@dataclass
class Actors:
    """Every group of a run (None where the algorithm does not need it) and the weight sync."""

    learners: Any
    rollout: Any = None
    critic: Any = None
    reference: Any = None
    teacher: Any = None
    reward: Any = None
    weight_sync: WeightSync | None = None
    placed: Any = None
    groups: list[Any] = field(default_factory=list)  # shutdown order is the reverse

    def shutdown(self) -> None:
        handles = [a for g in self.groups for a in fault.handles(g)]
        for g in reversed(self.groups):
            try:
                g.shutdown()
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                log.warning("shutdown of %s failed: %s", type(g).__name__, e)
        self.groups = []
        if fault.wait_dead(handles):  # ray.kill only queues the kill: a shared cluster stays clean
            log.warning("some actors still answered after being killed twice")
        if self.placed is not None:
            try:
                self.placed.remove()
            except Exception:  # noqa: BLE001
                pass
            self.placed = None


def start_actors(
    cfg: Config,
    needs: Any,
    make_objective: Callable[[], Any],
    actors: Actors | None = None,
) -> Actors:
    """Place and start the groups ``needs`` asks for; ``actors`` (empty) is filled as groups come
    up, so a failure half-way still lets the caller tear down what started. ``make_objective``
    builds, inside each learner (and critic) rank, what that rank minimises.

    Every group's actors are created first and then waited for together (one deadline,
    ``trainer.start_timeout_s``): engines build, ranks load and references load at the same time,
    not one group after another."""
    t0 = time.perf_counter()
    connect_ray(cfg)
    sizes = placement.default_groups(cfg, needs)
    plan = placement.make_plan(cfg, sizes)
    placement.check_fits(plan)
    a = actors or Actors(learners=None)
    a.placed = placed = placement.place(plan, timeout_s=cfg.placement.timeout_s)
    log.info("placement:\n%s", placement.describe(plan, placed))
    t_placed = time.perf_counter()

    reg = a.groups.append  # registered before anything blocks: an interrupt tears them down too
    if needs.rollout:
        a.rollout = RolloutGroup(cfg, cfg.model.path, placed, reg, wait=False)
    a.learners = LearnerGroup(cfg, "policy", placed, "learner", make_objective, reg, wait=False)
    if needs.critic:
        a.critic = LearnerGroup(cfg, "critic", placed, "critic", make_objective, reg, wait=False)
    if sizes["reference"]:
        a.reference = FrozenGroup(cfg, cfg.reference.path or cfg.model.path, "reference", placed)
        reg(a.reference)
    if needs.teacher:
        a.teacher = FrozenGroup(cfg, cfg.teacher.path, "teacher", placed)
        reg(a.teacher)
    if needs.reward:
        a.reward = RewardGroup(cfg, placed)
        reg(a.reward)
    timeout = fault.Guard(cfg, "start").start_timeout_s
    seconds = fault.wait_started([g.starting for g in a.groups], timeout)
    t_up = time.perf_counter()
    if a.rollout is not None:
        a.weight_sync = WeightSync(cfg, a.learners, a.rollout)
        # a restarted engine gets the current weights through the object store
        a.rollout.weight_source = lambda: a.learners.export_weights(cfg.rollout.sync_bucket_mb)
    log.info(
        "start-up: ray + placement %.1fs, groups up %.1fs (%s), weight sync set up %.1fs",
        t_placed - t0,
        t_up - t_placed,
        ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()),
        time.perf_counter() - t_up,
    )
    return a
