"""Weight sync learner → rollout engines, as the driver sees it: pick a transport once from where
the actors landed, then one call per sync.

Transports (docs/runtime.md):
- ``collective``: learner rank 0 and every engine worker in one weight-update group (gloo on CPU,
  NCCL on GPU), one broadcast per flat bucket. Chosen whenever engines and learners are separate
  processes on separate devices: on CPU always.
- ``ipc``: an engine on a learner rank's GPU (colocated) maps that rank's packed buckets through
  CUDA IPC handles; no copy.
- ``object_store``: safetensors buckets through Ray's object store. Works everywhere; the fallback
  (e.g. split on one GPU: NCCL refuses two ranks on one device, and a non-colocated engine may sit
  on a GPU no learner rank uses).

Knows actor groups, never an algorithm.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from rlpost.config import Config, ConfigError
from rlpost.runtime.weight_group import count_loaded, plan_buckets, plan_to_wire

log = logging.getLogger("rlpost")
GROUP_TIMEOUT_S = 900.0  # a ZeRO-3 gather of a large model between two broadcasts stays inside


def choose_transport(
    requested: str, learner_devices: list[str], engine_devices: list[str]
) -> tuple[str, str]:
    """(transport, why). ``*_devices`` are physical device ids ('cpu' on CPU) of each learner
    rank and each engine worker; learner rank 0 is ``learner_devices[0]``."""
    on_gpu = any(d != "cpu" for d in learner_devices + engine_devices)
    members = [learner_devices[0], *engine_devices]  # the weight-update group
    # NCCL refuses two ranks of one communicator on one device; gloo on CPU does not care
    collective_ok = not on_gpu or len(set(members)) == len(members)
    all_shared = on_gpu and all(d in learner_devices for d in engine_devices)
    if requested == "object_store":
        return requested, "requested"
    if requested == "ipc":
        if not all_shared:
            raise ConfigError(
                "rollout.sync_transport: ipc needs every engine on a learner rank's GPU "
                "(placement.mode=colocate on GPUs)"
            )
        return "ipc", "requested"
    if requested == "collective":
        if not collective_ok:
            raise ConfigError(
                "rollout.sync_transport: collective over NCCL needs learner rank 0 and every "
                "engine worker on a GPU of its own (NCCL refuses two ranks on one device); "
                "use auto"
            )
        return "collective", "requested"
    if all_shared:
        return "ipc", "every engine shares a GPU with a learner rank"
    if collective_ok:
        return "collective", f"engines in their own processes ({'NCCL' if on_gpu else 'gloo'})"
    return "object_store", (
        "some GPU holds two members of the weight-update group and not every engine sits on a "
        "learner's GPU; NCCL refuses two ranks on one device, so the object store carries the "
        "weights"
    )


class WeightSync:
    """Set up at start (transport, bucket plan, group), then ``sync(version)`` after each update."""

    def __init__(self, cfg: Config, learners: Any, rollout: Any) -> None:
        self.cfg, self.learners, self.rollout = cfg, learners, rollout
        self.learner_builds = learners.builds  # the group holds these ranks' processes
        r = cfg.rollout
        engine_devices = [d for per in rollout.device_ids() for d in per]
        self.transport, why = choose_transport(
            r.sync_transport, learners.device_ids(), engine_devices
        )
        log.info("weight sync: %s (%s)", self.transport, why)
        meta, aliases = learners.weight_meta()
        plan = plan_buckets(meta, r.sync_bucket_mb * 2**20, aliases)
        self.wire_plan, self.expected = plan_to_wire(plan), count_loaded(plan)
        self.nbytes = sum(b.nbytes for b in plan)
        if self.transport == "collective":
            host, port = learners.weight_group_address()
            world = 1 + len(engine_devices)
            ray.get(
                rollout.group_init(host, port, GROUP_TIMEOUT_S)
                + learners.weight_group_init(host, port, world, GROUP_TIMEOUT_S)
            )
            log.info(
                "weight-update group: %d ranks, %d buckets, %.1f MB per sync",
                world,
                len(plan),
                self.nbytes / 2**20,
            )

    def sync(self, version: int, verify: bool = False, rewind: bool = False) -> dict[str, float]:
        """Learner weights into every engine as policy ``version``. With ``verify``, compare
        per-tensor checksums of every tensor the engines keep in checkpoint layout (vLLM fuses
        q/k/v and repacks linear weights on CPU: those are covered by ``rollout/logprob_diff``)."""
        t0 = time.perf_counter()
        if rewind:  # back to a checkpoint's weights: an older version, on purpose
            self.rollout.forget_version()
        if self.transport == "collective" and (
            self.rollout.restarts or self.learners.builds != self.learner_builds
        ):
            log.warning(
                "weight sync: a restarted engine or learner rank is not in the weight-update "
                "group; the object store carries the weights from now on"
            )
            self.transport = "object_store"
        if self.transport == "collective":
            recv = self.rollout.group_receive(self.wire_plan, self.expected, version)
            ray.get(recv + self.learners.broadcast_weights(self.wire_plan))
        elif self.transport == "ipc":
            handles = self.learners.ipc_handles(self.wire_plan)
            try:
                self.rollout.ipc_receive(handles, self.wire_plan, self.expected, version)
            finally:
                self.learners.ipc_release()
        else:
            self.rollout.load_weights(
                self.learners.export_weights(self.cfg.rollout.sync_bucket_mb), version
            )
        out = {"sync/seconds": time.perf_counter() - t0, "sync/mb": self.nbytes / 2**20}
        if verify:
            out.update(verify_checksums(self.learners, self.rollout))
        return out


def verify_checksums(learners: Any, rollout: Any) -> dict[str, float]:
    names = learners.param_names()
    mine = learners.checksums(names)
    theirs = rollout.checksums(names)
    compared = [n for n in names if all(n in t for t in theirs)]
    bad = [n for n in compared if any(t[n] != mine[n] for t in theirs)]
    return {"sync/checksummed": float(len(compared)), "sync/checksum_mismatch": float(len(bad))}
