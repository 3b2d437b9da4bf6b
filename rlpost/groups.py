"""Rows that share a prompt: their group id, and the rows of each group. One helper for the whole
code base (rollouts, algorithms and the objective layer all group by prompt); pure Python."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import torch

# Group ids are step·GROUP_STRIDE + prompt index: unique across the steps of a run, and readable.
GROUP_STRIDE = 100_000


def group_ids_for(step: int, n_prompts: int, n: int = 1) -> list[int]:
    """The ``group_id`` column of ``n_prompts`` prompts with ``n`` consecutive rows each.

    Rows that share a prompt share an id; ids of different steps never collide.
    """
    if n_prompts > GROUP_STRIDE:
        raise ValueError(f"{n_prompts} prompts in one step: group ids allow {GROUP_STRIDE}")
    return [step * GROUP_STRIDE + i for i in range(n_prompts) for _ in range(n)]


def groups(ids: Iterable[Hashable]) -> dict[Any, list[int]]:
    """Group id → its row indices, groups in first-seen order, rows in batch order."""
    if isinstance(ids, torch.Tensor):  # tensor elements hash by identity: compare values
        ids = ids.tolist()
    out: dict[Any, list[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(g, []).append(i)
    return out
