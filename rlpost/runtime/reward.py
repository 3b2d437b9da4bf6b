"""RewardGroup: the reward pipeline (functions in worker processes, reward models, remote servers)
inside its own Ray actor, so user code never runs in the driver."""

from __future__ import annotations

from typing import Any

import ray

from rlpost.config import Config


class RewardGroup:
    def __init__(self, cfg: Config, placed: Any = None) -> None:
        from rewards.pipeline import RewardPipeline

        cpus = getattr(cfg.placement, "aux_cpus", 0.25)
        opts: dict[str, Any] = {"num_cpus": cpus}
        if placed is not None:
            opts["scheduling_strategy"] = placed.strategy("reward", 0)
        self.actor = ray.remote(RewardPipeline).options(**opts).remote(cfg)

    def score_async(
        self, prompts: list[str], completions: list[str], columns: dict[str, list], step: int
    ) -> ray.ObjectRef:
        return self.actor.score.remote(prompts, completions, columns, step)

    def state_dict(self) -> dict:
        return ray.get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.actor.load_state_dict.remote(state))

    def shutdown(self) -> None:
        try:
            ray.get(self.actor.close.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        ray.kill(self.actor)
