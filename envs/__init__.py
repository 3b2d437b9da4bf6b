"""Tasks (prompts + verifiers) and environments (multi-turn, step-level): the third plug-in family.

``get_task("arithmetic?digits=1&ops=+")`` builds a task; ``make_env("calculator")`` an environment;
a user's own loads by path (``my_env.py:MyEnv``). The multi-turn names import lazily, since they
pull in torch and the task generators do not need it.
"""

from typing import Any

from envs.base import TASKS, Task, get_task, make_task_file, parse_options, task_names
from envs.steps import StepEnv, split_steps

_MULTITURN = ("ENVS", "Env", "StepResult", "make_env", "make_envs", "rollout_multiturn")

__all__ = [
    "TASKS",
    "StepEnv",
    "Task",
    "get_task",
    "make_task_file",
    "parse_options",
    "split_steps",
    "task_names",
    *_MULTITURN,
]


def __getattr__(name: str) -> Any:
    if name in _MULTITURN:
        from envs import multiturn  # would close an import cycle (that module imports this one)

        return getattr(multiturn, name)
    raise AttributeError(f"module 'envs' has no attribute '{name}'")
