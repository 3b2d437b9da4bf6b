"""The learner's memory/padding savers change nothing numerically: chunked log-probs equal the
whole-logits ones, and micro-batches cut from length-sorted rows give the padded batch's gradient."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlpost.batch import Batch, build_sequences, length_order
from rlpost.models.hf import causal_logprobs, token_logprobs
from rlpost.objective import aggregate, global_counts


def _model(dtype: torch.dtype = torch.float64, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(conf).to(dtype).eval()


def _batch(seed: int = 1, rows: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(rows):
        p = int(torch.randint(2, 6, (1,), generator=g))
        r = int(torch.randint(1, 12, (1,), generator=g))
        prompts.append(torch.randint(1, 97, (p,), generator=g).tolist())
        responses.append(torch.randint(1, 97, (r,), generator=g).tolist())
    return build_sequences(prompts, responses, pad_id=0)


def test_chunked_logprobs_equal_whole_logits():
    b = _batch()
    for tied in (False, True):
        model = _model(tied=tied)
        ids, attn = b["input_ids"], b["attention_mask"]
        whole = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids, 0.7)
        for chunk in (1, 5, 13, 10_000):
            part = causal_logprobs(model, ids, attn, 0.7, chunk_tokens=chunk)
            assert part.shape == whole.shape
            torch.testing.assert_close(part, whole.float(), atol=1e-6, rtol=0)


def test_chunked_logprobs_give_the_same_gradient():
    b = _batch(seed=3)
    ids, attn, mask = b["input_ids"], b["attention_mask"], b["response_mask"]
    grads = []
    for chunk in (0, 7):
        model = _model()
        model.zero_grad()
        lp = causal_logprobs(model, ids, attn, 1.0, chunk_tokens=chunk)
        (lp * mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def _loss_grad(model: LlamaForCausalLM, parts: list[Batch], counts: dict) -> torch.Tensor:
    """Σ over micro-batches of a token-mean policy-gradient-like loss with global counts."""
    model.zero_grad()
    for mb in parts:
        lp = causal_logprobs(model, mb["input_ids"], mb["attention_mask"], 1.0)
        loss = aggregate(-lp * mb["adv"], mb["response_mask"], "token-mean", **counts)
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_length_sorted_micro_batches_give_the_padded_batch_gradient():
    b = _batch(seed=5, rows=8)
    b["adv"] = torch.randn(b["input_ids"].shape, generator=torch.Generator().manual_seed(9)).to(
        torch.float64
    )
    counts = global_counts(b["response_mask"], max_len=16)
    model = _model()
    whole = _loss_grad(model, [b], counts)
    order = length_order(b)
    lengths = b["attention_mask"].sum(1)[order].tolist()
    assert lengths == sorted(lengths)
    parts = [mb.trim() for mb in b.select(order).split(3)]
    assert sum(mb["input_ids"].numel() for mb in parts) < b["input_ids"].numel()
    bucketed = _loss_grad(model, parts, counts)
    torch.testing.assert_close(bucketed, whole, atol=1e-6, rtol=0)


def test_length_order_keeps_pairs_whole():
    b = _batch(seed=7, rows=8)
    order = length_order(b, row_multiple=2)
    assert sorted(order) == list(range(8))
    assert all(order[i] // 2 == order[i + 1] // 2 and order[i] % 2 == 0 for i in range(0, 8, 2))
