"""Every Hugging Face model and tokenizer rlpost loads goes through here: the learner, the critic,
the frozen reference/teacher, reward models, `rlpost eval` and the tiny-model builder's checks.

One place decides dtype (``auto``: bf16 on a GPU, fp32 on CPU), device and ``trust_remote_code``,
so a model that loads in one actor loads the same way in every other. Imports nothing of rlpost.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

KINDS = {
    "causal_lm": AutoModelForCausalLM,  # policy, reference, teacher
    "value": AutoModelForTokenClassification,  # critic: one value per token
    "reward": AutoModelForSequenceClassification,  # reward model: one score per sequence
}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` is bf16 on a GPU and fp32 on CPU; otherwise a torch dtype name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return resolved


def load_model(
    path: str,
    kind: str = "causal_lm",
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    **kw: Any,
) -> PreTrainedModel:
    """A model of ``kind`` (causal_lm, value, reward) from a local dir or hub id; moved to
    ``device`` when given (DeepSpeed places learner weights itself, so it passes none)."""
    cls = KINDS[kind]
    if kind == "value":
        kw.setdefault("num_labels", 1)
    model = cls.from_pretrained(
        path,
        dtype=resolve_dtype(dtype, device or "cpu"),
        trust_remote_code=trust_remote_code,
        **kw,
    )
    return model.to(device) if device is not None else model


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log π(x_t | x_<t) aligned with input_ids ([B, L]; position 0 gets 0)."""
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    target = input_ids[:, 1:]
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(lp, (1, 0))
