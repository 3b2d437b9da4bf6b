"""Rewards: plug-in reward functions, reward models and ensembles, remote reward servers.

Light to import (no torch): the model, ensemble, pipeline and server modules load on demand.
"""

from rewards import builtins  # noqa: F401  (registers the built-in reward functions)
from rewards.base import (
    REWARD_FUNCTIONS,
    RewardError,
    detect_style,
    make_caller,
    register_reward,
    resolve_function,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardError",
    "detect_style",
    "make_caller",
    "register_reward",
    "resolve_function",
]
