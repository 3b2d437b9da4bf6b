"""Frozen models (reference policy, KDRL teacher): log-probs on given tokens, nothing else."""

from __future__ import annotations

from typing import Any

import ray
import torch

from rlpost.batch import Batch, length_order
from rlpost.config import Config
from rlpost.models.hf import causal_logprobs, load_model, load_tokenizer


class FrozenWorker:
    def __init__(self, cfg: Config, path: str, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_model(
            path, "causal_lm", "auto", self.device, cfg.model.trust_remote_code
        ).eval()
        self.temperature = cfg.rollout.temperature
        self.micro = max(1, cfg.learner.micro_batch_size)
        self.chunk = cfg.learner.logprob_chunk

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> torch.Tensor:
        width = batch["input_ids"].shape[1]
        order = length_order(batch)  # micro-batches of like length: less padding
        outs = []
        for mb in batch.select(order).split(self.micro):
            mb = mb.trim()
            ids = mb["input_ids"].to(self.device)
            attn = mb["attention_mask"].to(self.device)
            lp = causal_logprobs(self.model, ids, attn, self.temperature, self.chunk).cpu()
            outs.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(outs)[torch.argsort(torch.tensor(order))]


class FrozenGroup:
    """One frozen model actor (Reference or Teacher); ``logprobs`` returns an ObjectRef-able call."""

    def __init__(self, cfg: Config, path: str, group: str, placed: Any = None) -> None:
        cpus = cfg.placement.aux_cpus if hasattr(cfg.placement, "aux_cpus") else 0.25
        opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": cfg.learner.gpus_per_rank}
        if placed is not None:
            opts["scheduling_strategy"] = placed.strategy(group, 0)
        threads = cfg.learner.torch_threads or 1
        self.actor = ray.remote(FrozenWorker).options(**opts).remote(cfg, path, threads)
        self.path = path

    def logprobs_async(self, batch: Batch) -> ray.ObjectRef:
        return self.actor.logprobs.remote(batch)

    def shutdown(self) -> None:
        ray.kill(self.actor)


def check_same_tokenizer(student: str, teacher: str) -> None:
    """KDRL: teacher log-probs on the student's tokens only make sense with one vocabulary."""
    a, b = load_tokenizer(student), load_tokenizer(teacher)
    if a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"teacher.path: the teacher's tokenizer ({teacher}, {len(b)} tokens) differs from the "
            f"student's ({student}, {len(a)} tokens); KDRL needs one shared vocabulary"
        )
