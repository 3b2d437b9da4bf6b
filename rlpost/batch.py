"""The one data protocol between actors: named tensors with a shared first dimension plus per-row
Python columns (prompt text, ground truth, group id, policy version).

Layout convention for token tensors, all ``[B, L]`` and aligned with ``input_ids`` (prompt then
response, right-padded): a per-token value at position ``t`` belongs to token ``input_ids[:, t]``,
e.g. ``old_logp[:, t] = log π(input_ids[t] | input_ids[<t])``. ``response_mask`` is 1 on response
tokens the loss sees. Nothing is re-tokenised between generation and training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    columns: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        for t in self.tensors.values():
            return int(t.shape[0])
        for c in self.columns.values():
            return len(c)
        return 0

    def __getitem__(self, key: str) -> Any:
        if key in self.tensors:
            return self.tensors[key]
        if key in self.columns:
            return self.columns[key]
        raise KeyError(
            f"batch has no '{key}' (tensors: {sorted(self.tensors)}, "
            f"columns: {sorted(self.columns)})"
        )

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.columns

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if len(self) and value.shape[0] != len(self):
                raise ValueError(f"'{key}' has {value.shape[0]} rows, batch has {len(self)}")
            self.tensors[key] = value
        else:
            value = list(value)
            if len(self) and len(value) != len(self):
                raise ValueError(f"'{key}' has {len(value)} rows, batch has {len(self)}")
            self.columns[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def select(self, idx: list[int] | torch.Tensor) -> Batch:
        """Rows by index (keeps order given)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.tolist()
        it = torch.as_tensor(idx, dtype=torch.long)
        return Batch(
            {k: v.index_select(0, it) for k, v in self.tensors.items()},
            {k: [v[i] for i in idx] for k, v in self.columns.items()},
            dict(self.meta),
        )

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(
            {k: v[start:stop] for k, v in self.tensors.items()},
            {k: v[start:stop] for k, v in self.columns.items()},
            dict(self.meta),
        )

    def chunk(self, n: int) -> list[Batch]:
        """n contiguous equal parts (data-parallel split); the size must divide."""
        size = len(self)
        if size % n:
            raise ValueError(f"cannot split {size} rows into {n} equal parts")
        step = size // n
        return [self.slice(i * step, (i + 1) * step) for i in range(n)]

    def split(self, size: int) -> list[Batch]:
        return [self.slice(i, min(i + size, len(self))) for i in range(0, len(self), size)]

    def repeat_interleave(self, n: int) -> Batch:
        """Each row n times in a row: prompts → groups of samples."""
        idx = [i for i in range(len(self)) for _ in range(n)]
        return self.select(idx)

    def trim(self) -> Batch:
        """Drop right padding columns shared by all rows (cuts learner compute)."""
        if "attention_mask" not in self.tensors:
            return self
        length = int(self.tensors["attention_mask"].sum(1).max().item())
        out = Batch({}, dict(self.columns), dict(self.meta))
        width = self.tensors["attention_mask"].shape[1]
        for k, v in self.tensors.items():
            out.tensors[k] = v[:, :length] if v.dim() >= 2 and v.shape[1] == width else v
        return out

    def to(self, device: str | torch.device) -> Batch:
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, self.columns, self.meta)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Row-wise concat; token tensors of different widths are right-padded with 0."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return Batch()
        out = Batch(meta=dict(batches[0].meta))
        for k in batches[0].tensors:
            parts = [b.tensors[k] for b in batches]
            if parts[0].dim() >= 2:
                width = max(p.shape[1] for p in parts)
                parts = [
                    torch.nn.functional.pad(p, (0, width - p.shape[1])) if p.shape[1] < width else p
                    for p in parts
                ]
            out.tensors[k] = torch.cat(parts, 0)
        for k in batches[0].columns:
            out.columns[k] = [x for b in batches for x in b.columns[k]]
        return out


def pad_right(seqs: list[list[int]], pad: int = 0, width: int | None = None) -> torch.Tensor:
    width = width or max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def pad_right_float(seqs: list[list[float]], width: int) -> torch.Tensor:
    out = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, s in enumerate(seqs):
        if s:
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.float32)
    return out


def build_sequences(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    response_logps: list[list[float]] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Prompt+response token rows in the Batch layout (see module docstring)."""
    full = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in full)
    input_ids = pad_right(full, pad_id, width)
    attn = pad_right([[1] * len(s) for s in full], 0, width)
    resp = pad_right(
        [[0] * len(p) + [1] * len(r) for p, r in zip(prompt_ids, response_ids)], 0, width
    )
    b = Batch({"input_ids": input_ids, "attention_mask": attn, "response_mask": resp.float()})
    if response_logps is not None:
        b.tensors["old_logp"] = pad_right_float(
            [[0.0] * len(p) + list(lp) for p, lp in zip(prompt_ids, response_logps)], width
        )
    b.columns["prompt_len"] = [len(p) for p in prompt_ids]
    b.columns["response_len"] = [len(r) for r in response_ids]
    b.columns["completion_ids"] = [list(r) for r in response_ids]  # TRL rewards take them
    return b


def length_order(batch: Batch, row_multiple: int = 1) -> list[int]:
    """Row order that puts sequences of like length together (units of ``row_multiple`` rows,
    e.g. DPO pairs, stay whole and in order): micro-batches cut from it carry less padding. Losses
    use global counts, so the order of rows never changes a gradient."""
    lengths = batch["attention_mask"].sum(1).tolist()
    units = len(lengths) // row_multiple
    key = [max(lengths[u * row_multiple : (u + 1) * row_multiple]) for u in range(units)]
    order = sorted(range(units), key=lambda u: (key[u], u))
    return [u * row_multiple + j for u in order for j in range(row_multiple)]
