"""The machine's floor for one training step: what bare PyTorch/transformers and bare vLLM take
for the work a step must do, measured in the bench process on the very batch the anchor trained.

rlpost's s/step is reported as a ratio of this floor, so the overhead of actors, transports and
bookkeeping is one number instead of a guess against figures taken at another time (this
machine's timings drift by 2-3x between runs). No Ray, no DeepSpeed, no rlpost loss code here:
the floor must not inherit the costs it is there to expose. Models load through
``rlpost.models.hf`` like everywhere else.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from rlpost.models.hf import load_model


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token rows of any lengths."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
    return ids, attn


def sample_rows(prompt_ids: list[list[int]], samples: list[list[dict]]) -> list[list[int]]:
    """Prompt + completion token rows of a rollout (``RolloutGroup.generate``'s samples)."""
    return [p + s["token_ids"] for p, group in zip(prompt_ids, samples) for s in group]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """The learner's thread count for the measurement, the caller's afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(fn: Callable[[], None], reps: int) -> tuple[float, float]:
    """Median and best seconds of ``reps`` calls after one untimed warm-up call (allocator,
    kernels); the best is kept because on a shared machine it is the closer one to a floor."""
    fn()
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def _nll(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood from whole logits: the plainest loss with the same
    forward and backward shape as a policy-gradient loss over the same tokens."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    mask = attn[:, 1:].float()
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def _reference_forward_s(
    model_path: str,
    ids: torch.Tensor,
    attn: torch.Tensor,
    micro: int,
    reps: int,
    trust_remote_code: bool,
) -> tuple[float, float]:
    """No-grad forward in micro-batches, the frozen reference's work (its own function so the
    model is freed before the policy and its optimizer state are built)."""
    ref = load_model(model_path, "causal_lm", torch.float32, trust_remote_code=trust_remote_code)
    ref.eval()

    @torch.no_grad()
    def run() -> None:
        for s in range(0, ids.shape[0], micro):
            ref(input_ids=ids[s : s + micro], attention_mask=attn[s : s + micro])

    return _timed(run, reps)


def measure_floor(
    model_path: str,
    ids: torch.Tensor,
    attn: torch.Tensor,
    *,
    policy_threads: int,
    ref_threads: int,
    micro: int,
    mini: int = 0,
    autocast_bf16: bool = False,
    lr: float = 1e-6,
    grad_clip: float = 1.0,
    reps: int = 2,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Seconds of a no-grad reference forward and of one policy pass (forward + backward +
    AdamW step per mini-batch, micro-batches of ``micro`` rows) on ``ids``/``attn``, fp32, and
    the policy pass again under bf16 autocast when ``autocast_bf16`` (as the learner would run).
    Medians under ``*_s``, best runs under ``*_min_s``. Thread counts are the learner's and the frozen reference's."""
    rows = ids.shape[0]
    micro = max(1, min(micro, rows))
    mini = mini or rows
    out: dict[str, float] = {"rows": float(rows), "tokens": float(attn.sum())}

    with torch_threads(ref_threads):
        med, best = _reference_forward_s(model_path, ids, attn, micro, reps, trust_remote_code)
        out.update(reference_forward_s=med, reference_forward_min_s=best)
    policy = load_model(model_path, "causal_lm", torch.float32, trust_remote_code=trust_remote_code)
    policy.config.use_cache = False
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)

    def policy_pass(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            for m in range(0, rows, mini):
                stop = min(m + mini, rows)
                n_micro = -(-(stop - m) // micro)
                for s in range(m, stop, micro):
                    e = min(s + micro, stop)
                    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                        loss = _nll(policy, ids[s:e], attn[s:e])
                    (loss / n_micro).backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)

        return run

    with torch_threads(policy_threads):
        med, best = _timed(policy_pass(False), reps)
        out.update(policy_step_fp32_s=med, policy_step_fp32_min_s=best)
        if autocast_bf16:
            med, best = _timed(policy_pass(True), reps)
            out.update(policy_step_bf16_s=med, policy_step_bf16_min_s=best)
    return out


def floor_s_per_step(generation_s: float, floor: dict[str, float], epochs: int) -> float:
    """Bare generation + reference forward + policy pass x epochs, the policy pass in the
    precision the recipe trains in (bf16 autocast when it was measured, else fp32)."""
    policy = floor.get("policy_step_bf16_s", floor["policy_step_fp32_s"])
    return generation_s + floor["reference_forward_s"] + policy * max(1, epochs)
