"""Frozen models (reference policy, KDRL teacher): log-probs on given tokens, nothing else."""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from rlpost.batch import Batch, length_order
from rlpost.config import Config
from rlpost.models.hf import causal_logprobs, load_model, load_tokenizer
from rlpost.runtime import fault


class FrozenWorker:
    def __init__(self, cfg: Config, path: str, threads: int = 1) -> None:
        t0 = time.time()
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_model(
            path, "causal_lm", "auto", self.device, cfg.model.trust_remote_code
        ).eval()
        self.temperature = cfg.rollout.temperature
        self.micro = max(1, cfg.learner.micro_batch_size)
        self.chunk = cfg.learner.logprob_chunk
        print(f"frozen model {path} loaded in {time.time() - t0:.1f}s", flush=True)

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
    """One frozen model actor (Reference or Teacher). ``logprobs_async`` returns a
    :class:`fault.Pending`: if the actor dies it is recreated on its bundle and the batch redone."""

    def __init__(self, cfg: Config, path: str, group: str, placed: Any = None) -> None:
        cpus = cfg.placement.aux_cpus if hasattr(cfg.placement, "aux_cpus") else 0.25
        self.opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": cfg.learner.gpus_per_rank}
        if placed is not None:
            self.opts["scheduling_strategy"] = placed.strategy(group, 0)
        self.cfg, self.path, self.group = cfg, path, group
        self.guard = fault.Guard(cfg, group)
        self.actor = self._new()
        # up once the model is loaded: the caller waits for it with the other groups
        self.starting = fault.Starting(group, [f"{group}[0]"], [self.actor.__ray_ready__.remote()])

    def _new(self) -> Any:
        threads = self.cfg.learner.torch_threads or 1
        return ray.remote(FrozenWorker).options(**self.opts).remote(self.cfg, self.path, threads)

    def guards(self) -> list[fault.Guard]:
        return [self.guard]

    def restart(self) -> None:
        fault.kill_quietly([self.actor])
        self.actor = self._new()

    def logprobs_async(self, batch: Batch) -> fault.Pending:
        ref = ray.put(batch)  # one copy, whether the call runs once or again after a restart
        return fault.Pending(
            self.guard, f"{self.group}[0]", lambda: self.actor.logprobs.remote(ref), self.restart
        )

    def shutdown(self) -> None:
        fault.kill_quietly([self.actor])


def check_same_tokenizer(student: str, teacher: str) -> None:
    """KDRL: teacher log-probs on the student's tokens only make sense with one vocabulary."""
    a, b = load_tokenizer(student), load_tokenizer(teacher)
    if a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"teacher.path: the teacher's tokenizer ({teacher}, {len(b)} tokens) differs from the "
            f"student's ({student}, {len(a)} tokens); KDRL needs one shared vocabulary"
        )
