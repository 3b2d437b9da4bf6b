"""Reward functions a user might write, in every supported style and every broken way.

Loaded by path (``.../user_rewards.py:NAME``) inside worker processes, like a user's file.
"""

import asyncio
import math
import os
import signal
import time


# ---- good ones
def contains_answer(prompts, completions, answer, **kwargs):
    """TRL style: 1 if the reference answer appears in the completion."""
    return [float(str(a) in c) for c, a in zip(completions, answer)]


def only_completions(completions, **kwargs):
    """TRL style without a prompts parameter: prompts arrive in kwargs."""
    return [float(len(c)) for c in completions]


def fixed_params(prompts, completions, answer):
    """TRL style with no **kwargs: extra columns must not be passed."""
    return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]


def sees_step(prompts, completions, step=0, **kwargs):
    return [float(step)] * len(completions)


def half_none(prompts, completions, **kwargs):
    """None = does not apply (even rows)."""
    return [None if i % 2 == 0 else 2.0 for i in range(len(completions))]


async def async_len(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl style, float return."""
    return 1.0 if solution_str.strip() == str(ground_truth) else 0.0


def verl_dict(data_source, solution_str, ground_truth, extra_info=None):
    """verl style, dict return with an extra metric; checks the pieces it is handed."""
    assert data_source in ("rlpost", "gsm8k"), data_source
    assert isinstance(extra_info, dict) and "answer" not in extra_info
    return {"score": 0.5 if solution_str.strip() == str(ground_truth) else -0.5, "acc": 1.0}


def verl_raises_on_x(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str == "x":
        raise ValueError("cannot score x")
    return 1.0


async def verl_async(data_source, solution_str, ground_truth, extra_info=None):
    await asyncio.sleep(0)
    return float(len(solution_str))


def openrlhf_reward(queries, prompts, labels, **kwargs):
    """OpenRLHF style: queries are prompt + completion."""
    import torch

    return torch.tensor(
        [float(q.startswith(p) and q.endswith(str(y))) for q, p, y in zip(queries, prompts, labels)]
    )


# ---- broken ones
def raises(prompts, completions, **kwargs):
    raise ZeroDivisionError("boom")


def sleeps(prompts, completions, **kwargs):
    time.sleep(30)
    return [0.0] * len(completions)


def nan_second(prompts, completions, **kwargs):
    return [1.0, math.nan] + [1.0] * (len(completions) - 2)


def inf_first(prompts, completions, **kwargs):
    return [math.inf] + [1.0] * (len(completions) - 1)


def non_number(prompts, completions, **kwargs):
    return [1.0, "good", 1.0] + [1.0] * (len(completions) - 3)


def wrong_length(prompts, completions, **kwargs):
    return [1.0] * (len(completions) + 1)


def not_a_list(prompts, completions, **kwargs):
    return 3.0


def dies(prompts, completions, **kwargs):
    os._exit(7)


def killed_once(prompts, completions, **kwargs):
    """SIGKILLed from outside on its first call (as by the OOM killer); fine the next time."""
    marker = os.path.join(os.environ["RLPOST_TEST_MARKER_DIR"], "killed_once")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return [1.0] * len(completions)


def pid(prompts, completions, **kwargs):
    return [float(os.getpid())] * len(completions)


def logs_things(prompts, completions, trainer_state, log_metric, log_extra, **kwargs):
    """TRL 1.x extras: logs the step it saw and one value per row."""
    log_metric("seen_step", trainer_state.global_step)
    log_metric("max_steps", trainer_state.max_steps)
    log_extra("lengths", [len(c) for c in completions])
    return [float(len(c)) for c in completions]


def echo_id(prompts, completions, uid, **kwargs):
    """The row's own id: a load test can tell a lost or swapped answer."""
    return [float(u) for u in uid]


def sleeps_on_hang(prompts, completions, **kwargs):
    """Hangs when asked to (a completion 'hang'), else scores 1."""
    if "hang" in completions:
        time.sleep(600)
    return [1.0] * len(completions)
