"""Frozen models (reference policy, KDRL teacher): log-probs on given tokens, nothing else."""

from __future__ import annotations

from typing import Any

import ray
import torch

from rlpost.batch import Batch
from rlpost.config import Config
from rlpost.runtime import fault
from rlpost.runtime.learner import token_logprobs


class FrozenWorker:
    def __init__(self, cfg: Config, path: str, threads: int = 1) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.temperature = cfg.rollout.temperature
        self.micro = max(1, cfg.learner.micro_batch_size)

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> torch.Tensor:
        width = batch["input_ids"].shape[1]
        outs = []
        for mb in batch.split(self.micro):
            mb = mb.trim()
            ids = mb["input_ids"].to(self.device)
            logits = self.model(
                input_ids=ids, attention_mask=mb["attention_mask"].to(self.device)
            ).logits
            lp = token_logprobs(logits, ids, self.temperature).cpu()
            outs.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        return torch.cat(outs)


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
    from transformers import AutoTokenizer

    a, b = AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(teacher)
    if a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"teacher.path: the teacher's tokenizer ({teacher}, {len(b)} tokens) differs from the "
            f"student's ({student}, {len(a)} tokens); KDRL needs one shared vocabulary"
        )
