"""Multi-turn environments and the turn-by-turn rollout driver.

An environment answers the model: ``reset(row)`` gives the first user text, ``step(message)`` takes
the model's turn and returns the next observation, a reward and whether the episode is over.
The driver keeps one token sequence per episode: model tokens (trained, mask 1, with their sampling
log-probs) and observation tokens (spliced in verbatim, mask 0, so the loss never pushes the
model to imitate the environment). Generation stays token-in, token-out across turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from envs.base import build_with_options, parse_options
from rlpost.batch import Batch, pad_right, pad_right_float
from rlpost.registry import Registry

BUILTIN_MODULES = ("envs.calculator",)
Generate = Callable[[list[list[int]], int, list[str]], list[dict]]


@dataclass
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    """``stop`` (optional attribute): strings that end a model turn, e.g. a closing tool tag."""

    def reset(self, row: dict) -> str: ...

    def step(self, message: str) -> StepResult: ...


ENVS: Registry[type] = Registry("environment")


def load_builtins() -> None:
    import importlib

    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def get_env_class(spec: str) -> tuple[Any, dict[str, str], str]:
    load_builtins()
    name, opts = parse_options(spec)
    return ENVS.get(name), opts, name


def make_env(spec: str) -> Env:
    """One fresh environment from ``name``, ``name?opt=v`` or ``my_env.py:MyEnv?opt=v``."""
    cls, opts, name = get_env_class(spec)
    env = build_with_options(cls, opts, f"environment '{name}'")
    for method in ("reset", "step"):
        if not callable(getattr(env, method, None)):
            raise TypeError(f"environment '{name}': {type(env).__name__} has no {method}()")
    return env


def make_envs(spec: str, n: int) -> list[Env]:
    """n independent environments (one per episode: they keep per-episode state)."""
    return [make_env(spec) for _ in range(n)]


def _as_step_result(res: Any, env: Any) -> StepResult:
    if isinstance(res, StepResult):
        return res
    if isinstance(res, tuple) and len(res) in (3, 4):
        return StepResult(str(res[0]), float(res[1]), bool(res[2]), *(res[3:] or ()))
    raise TypeError(
        f"{type(env).__name__}.step must return StepResult(observation, reward, done), "
        f"got {type(res).__name__}"
    )


@dataclass
class _Episode:
    prompt_text: str
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    done: bool = False
    finish: str = "max_turns"

    def append(self, ids: Sequence[int], logp: Sequence[float] | None, model: bool) -> None:
        self.ids += list(ids)
        self.mask += [1.0 if model else 0.0] * len(ids)
        self.logp += list(logp) if logp is not None else [0.0] * len(ids)


def _check_outputs(outs: Any, n: int) -> list[dict]:
    if not isinstance(outs, list) or len(outs) != n:
        got = len(outs) if isinstance(outs, list) else type(outs).__name__
        raise ValueError(f"rollout_multiturn: generate returned {got} outputs for {n} prompts")
    for o in outs:
        if len(o["token_ids"]) != len(o["logprobs"]):
            raise ValueError(
                f"rollout_multiturn: generate returned {len(o['token_ids'])} tokens but "
                f"{len(o['logprobs'])} logprobs"
            )
    return outs


def rollout_multiturn(
    generate: Generate,
    tokenizer: Any,
    envs: list[Env],
    rows: list[dict],
    max_turns: int,
    max_new_tokens: int,
    *,
    chat_template: bool = True,
    system_prompt: str = "",
    max_len: int | None = None,
) -> Batch:
    """Play one episode per (env, row), batching each turn's generation across episodes.

    The prompt is ``env.reset(row)`` rendered like a data prompt (chat template if the tokenizer
    has one and ``chat_template``). Each turn generates up to ``max_new_tokens``; an observation
    is appended only when another model turn follows. ``max_len`` caps prompt + response tokens.
    Returns the Batch layout of rlpost/batch.py plus ``scores`` (sum of env rewards, [B] float)
    and columns prompt, completion, turns, finish_reason, prompt_len, response_len and the rows'
    other fields.
    """
    from rlpost.data import (
        render_prompt,  # would close an import cycle (that module imports this one)
    )

    if len(envs) != len(rows):
        raise ValueError(f"rollout_multiturn: {len(envs)} envs for {len(rows)} rows")
    if max_turns < 1:
        raise ValueError(f"rollout_multiturn: max_turns must be >= 1, got {max_turns}")
    episodes = []
    for env, row in zip(envs, rows):
        first = env.reset(row)
        if not isinstance(first, str) or not first.strip():
            raise ValueError(f"{type(env).__name__}.reset returned {first!r}, expected text")
        text, ids = render_prompt(tokenizer, first, chat_template, system_prompt)
        episodes.append(_Episode(text, ids))
    stop = sorted({s for env in envs for s in (getattr(env, "stop", None) or [])})

    for turn in range(max_turns):
        active = [i for i, ep in enumerate(episodes) if not ep.done]
        if not active:
            break
        inputs = [episodes[i].prompt_ids + episodes[i].ids for i in active]
        outs = _check_outputs(generate(inputs, max_new_tokens, stop), len(active))
        for i, seq, out in zip(active, inputs, outs):
            ep, env = episodes[i], envs[i]
            tokens, logps = list(out["token_ids"]), list(out["logprobs"])
            room = None if max_len is None else max_len - len(seq)
            if room is not None and len(tokens) > room:
                tokens, logps = tokens[:room], logps[:room]
                ep.append(tokens, logps, model=True)
                ep.turns += 1
                ep.done, ep.finish = True, "max_len"
                continue
            ep.append(tokens, logps, model=True)
            ep.turns += 1
            # The ids are the truth: a backend's text may drop a matched stop string.
            message = tokenizer.decode(tokens, skip_special_tokens=True)
            res = _as_step_result(env.step(message), env)
            ep.reward += float(res.reward)
            if res.done:
                ep.done, ep.finish = True, "done"
                continue
            if turn == max_turns - 1:
                ep.done = True
                continue
            obs = tokenizer(res.observation, add_special_tokens=False)["input_ids"]
            if max_len is not None and len(seq) + len(tokens) + len(obs) >= max_len:
                # No room for even one more model token after the observation.
                ep.done, ep.finish = True, "max_len"
                continue
            ep.append(obs, None, model=False)
    return _to_batch(episodes, rows, tokenizer)


def _to_batch(episodes: list[_Episode], rows: list[dict], tokenizer: Any) -> Batch:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    full = [ep.prompt_ids + ep.ids for ep in episodes]
    width = max(len(s) for s in full)
    b = Batch()
    b["input_ids"] = pad_right(full, pad, width)
    b["attention_mask"] = pad_right([[1] * len(s) for s in full], 0, width)
    b["response_mask"] = pad_right_float(
        [[0.0] * len(ep.prompt_ids) + ep.mask for ep in episodes], width
    )
    b["old_logp"] = pad_right_float(
        [[0.0] * len(ep.prompt_ids) + ep.logp for ep in episodes], width
    )
    b["scores"] = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)
    b["prompt"] = [ep.prompt_text for ep in episodes]
    b["completion"] = [tokenizer.decode(ep.ids, skip_special_tokens=True) for ep in episodes]
    b["turns"] = [ep.turns for ep in episodes]
    b["finish_reason"] = [ep.finish for ep in episodes]
    b["prompt_len"] = [len(ep.prompt_ids) for ep in episodes]
    b["response_len"] = [len(ep.ids) for ep in episodes]
    skip = set(b.columns) | {"prompt_ids", "raw_prompt"}
    for key in dict.fromkeys(k for r in rows for k in r):
        if key not in skip:
            b[key] = [r.get(key) for r in rows]
    return b
