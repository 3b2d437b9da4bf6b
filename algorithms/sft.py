"""Supervised fine-tuning on reference completions, through the same learner group as RL.

Rows come from the data set, not from generation: a ``task:NAME`` gives each prompt its ideal
completion (``task.sft_target(row)``); a file gives it in a ``completion``, ``response`` or
``target`` column. The loss is the token-mean negative log-likelihood of those completions
(``sft_loss`` with global counts, so it does not depend on ranks or micro-batches):

    loss = −(1/N_tokens) · Σ_rows Σ_t∈completion log π(y_t | x, y_<t)

No vLLM engine is needed (``Needs.rollout = False``) unless ``trainer.eval_every`` asks for
in-loop evaluation, which generates with the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from algorithms.base import Algorithm, Experience, Needs, as_floats, register
from envs.base import get_task
from rlpost.batch import Batch, build_sequences
from rlpost.groups import group_ids_for
from rlpost.objective import masked_mean, sft_loss

TARGET_COLUMNS = ("completion", "response", "target")


def target_text(row: dict, task: Any | None) -> str:
    """The completion a row should be trained on (task's ``sft_target`` or a data column)."""
    if task is not None:
        return str(task.sft_target(row))
    for col in TARGET_COLUMNS:
        if isinstance(row.get(col), str) and row[col].strip():
            return row[col]
    raise ValueError(
        f"sft: row {row.get('row', '?')} has no target: use data.train=task:NAME or a file with "
        f"a non-empty '{TARGET_COLUMNS[0]}', '{TARGET_COLUMNS[1]}' or '{TARGET_COLUMNS[2]}' "
        f"column (columns: {', '.join(sorted(row))})"
    )


def sft_rows(
    prompts: list[dict], targets: list[str], tokenizer: Any, pad_id: int, step: int = 0
) -> Batch:
    """Prompt ids + target ids + eos per row; ``response_mask`` covers the target and the eos."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    enc = tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
    resp = [list(ids) + eos for ids in enc]
    batch = build_sequences([p["prompt_ids"] for p in prompts], resp, pad_id=pad_id)
    for k in prompts[0] if prompts else ():
        if k != "prompt_ids":
            batch.columns[k] = [p.get(k) for p in prompts]
    batch.columns.update(
        completion=list(targets),
        group_id=group_ids_for(step, len(prompts)),
        finish_reason=["stop"] * len(prompts),
    )
    # Nothing to score: the targets are the data. Present scores keep the reward group idle.
    batch.tensors["scores"] = torch.zeros(len(prompts))
    return batch


@register
class SFT(Algorithm):
    name = "sft"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._task: Any | None = None

    def needs(self) -> Needs:
        return Needs(samples_per_prompt=1, rollout=bool(self.cfg.trainer.eval_every))

    def task(self) -> Any | None:
        spec = self.cfg.data.train.strip()
        if self._task is None and spec.startswith("task:"):
            self._task = get_task(spec.removeprefix("task:"))
        return self._task

    # -- driver: rows from the data set, no generation ---------------------------------------
    def collect(self, exp: Experience, prompts: list[dict]) -> Batch:
        task = self.task()
        targets = [target_text(p, task) for p in prompts]
        tok = exp.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        batch = sft_rows(prompts, targets, tok, pad, step=getattr(exp, "step", 0))
        batch.columns["policy_version"] = [exp.policy_version] * len(batch)
        return batch

    def prepare(self, batch: Batch) -> dict[str, float]:
        return {"sft/target_tokens_mean": float(batch["response_mask"].sum(1).mean())}

    # -- learner: NLL of the targets ---------------------------------------------------------
    def loss(self, logp: torch.Tensor, batch: Batch, counts: dict) -> tuple[torch.Tensor, dict]:
        mask = batch["response_mask"]
        loss, m = sft_loss(logp, mask, self.a.agg, **counts)
        # Token accuracy proxy: mean probability of the target token.
        p_target = masked_mean(logp.detach().exp(), mask)
        return loss, as_floats({"loss/sft": loss.detach(), "sft/nll": m["nll"], "sft/p": p_target})
