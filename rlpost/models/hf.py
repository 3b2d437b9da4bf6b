"""Every Hugging Face model and tokenizer rlpost loads goes through here: the learner, the critic,
the frozen reference/teacher, reward models, `rlpost eval` and the tiny-model builder's checks.

One place decides dtype (``auto``: bf16 on a GPU, fp32 on CPU), device and ``trust_remote_code``,
so a model that loads in one actor loads the same way in every other. Imports nothing of rlpost.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
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
    lp = _picked_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)
    return torch.nn.functional.pad(lp, (1, 0))


def _picked_logprobs(
    logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def can_chunk_logits(model: PreTrainedModel) -> bool:
    """Chunking needs logits = output_embeddings(decoder hidden states), with nothing after."""
    conf = model.config
    return (
        model.get_output_embeddings() is not None
        and not getattr(conf, "final_logit_softcapping", None)
        and getattr(conf, "logit_scale", None) in (None, 1, 1.0)
    )


def causal_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
    chunk_tokens: int = 0,
) -> torch.Tensor:
    """log π(x_t | x_<t) of a causal LM, aligned with input_ids ([B, L]; position 0 gets 0).

    With ``chunk_tokens`` > 0 the [B, L, vocab] logits are never made whole: the decoder's hidden
    states go through the output layer ``chunk_tokens`` positions at a time, in fp32 for the
    log-softmax, and under autograd each chunk is recomputed in backward instead of being kept
    (with a 150k vocabulary, whole fp32 logits are the learner's largest tensor)."""
    if chunk_tokens <= 0 or not can_chunk_logits(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        return token_logprobs(out.logits, input_ids, temperature)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)[0]
    head = model.get_output_embeddings()
    target = input_ids[:, 1:]
    hidden = hidden[:, :-1]
    step = max(1, chunk_tokens // max(1, hidden.shape[0]))

    def chunk(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _picked_logprobs(head(h), t, temperature)

    parts = []
    for s in range(0, hidden.shape[1], step):
        h, t = hidden[:, s : s + step], target[:, s : s + step]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(torch.utils.checkpoint.checkpoint(chunk, h, t, use_reentrant=False))
        else:
            parts.append(chunk(h, t))
    lp = torch.cat(parts, dim=1) if parts else hidden.new_zeros(hidden.shape[0], 0)
    return torch.nn.functional.pad(lp.float(), (1, 0))
