"""RewardGroup: the reward pipeline (functions in worker processes, reward models, remote servers)
inside its own Ray actor, so user code never runs in the driver."""

from __future__ import annotations

from typing import Any

import ray

from rewards.pipeline import RewardPipeline
from rlpost.config import Config
from rlpost.runtime import fault


class RewardGroup:
    """The reward actor. If it dies it is recreated on its bundle with the normaliser state of
    the last checkpoint, and the batch it owed is scored again (see rlpost/runtime/fault.py)."""

    def __init__(self, cfg: Config, placed: Any = None) -> None:
        cpus = getattr(cfg.placement, "aux_cpus", 0.25)
        self.opts: dict[str, Any] = {"num_cpus": cpus}
        if placed is not None:
            self.opts["scheduling_strategy"] = placed.strategy("reward", 0)
        self.cfg = cfg
        self.guard = fault.Guard(cfg, "reward")
        self._state: dict = {}  # what a replacement actor starts from
        self.actor = self._new()
        # up once its workers are: the caller waits for it with the other groups
        self.starting = fault.Starting("reward", ["reward[0]"], [self.actor.__ray_ready__.remote()])

    def _new(self) -> Any:
        return ray.remote(RewardPipeline).options(**self.opts).remote(self.cfg)

    def guards(self) -> list[fault.Guard]:
        return [self.guard]

    def restart(self) -> None:
        fault.kill_quietly([self.actor])
        self.actor = self._new()
        if self._state:
            self.guard.get(self.actor.load_state_dict.remote(self._state), "reward[0] state")

    def score_async(
        self, prompts: list[str], completions: list[str], columns: dict[str, list], step: int
    ) -> fault.Pending:
        def submit() -> ray.ObjectRef:
            return self.actor.score.remote(prompts, completions, columns, step)

        return fault.Pending(self.guard, "reward[0]", submit, self.restart)

    def state_dict(self) -> dict:
        self._state = self.guard.get(self.actor.state_dict.remote(), "reward[0] state")
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self._state = state
        self.guard.get(self.actor.load_state_dict.remote(state), "reward[0] state")

    def shutdown(self) -> None:
        try:
            ray.get(self.actor.close.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        fault.kill_quietly([self.actor])
