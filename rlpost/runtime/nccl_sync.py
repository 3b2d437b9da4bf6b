"""NCCL broadcast weight sync for split GPU placement.

Learner rank 0 and every vLLM worker join one stateless NCCL group (vLLM's own
``StatelessProcessGroup`` + ``PyNcclCommunicator``, so it does not disturb either side's
torch.distributed world). Rank 0 broadcasts each gathered parameter; each worker receives into a
fresh buffer and feeds it to ``reload_weights`` as a stream. Only the (name, dtype, shape) list
travels through Ray.

This path needs CUDA GPUs; CI has none, so it is exercised only on GPU machines. The object-store
transport (rlpost/trainer.py: sync_weights) is the default everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

GROUP_RANK0 = 0


def _communicator(host: str, port: int, rank: int, world: int, device: Any) -> Any:
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world)
    return PyNcclCommunicator(group, device=device)


class LearnerBroadcaster:
    """Lives in learner rank 0 (created on demand through ``LearnerWorker.nccl_*`` methods)."""

    def __init__(self, host: str, port: int, world: int) -> None:
        self.comm = _communicator(host, port, GROUP_RANK0, world, torch.cuda.current_device())

    def broadcast(self, tensors: Iterator[torch.Tensor]) -> int:
        count = 0
        for t in tensors:
            self.comm.broadcast(
                t.contiguous().cuda(), src=GROUP_RANK0, stream=torch.cuda.current_stream()
            )
            count += 1
        torch.cuda.synchronize()
        return count


class NcclReceiverExtension:
    """Mixed into the vLLM worker extension: join the group, then receive a parameter stream."""

    def rlpost_nccl_init(self, host: str, port: int, rank_offset: int, world: int) -> None:
        rank = rank_offset + self.rank  # type: ignore[attr-defined]  # TP rank of this worker
        self._rlpost_comm = _communicator(host, port, rank, world, self.device)  # type: ignore[attr-defined]

    def rlpost_nccl_receive(self, meta: list[tuple[str, str, list[int]]]) -> int:
        comm = self._rlpost_comm

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype, shape in meta:
                buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)  # type: ignore[attr-defined]
                comm.broadcast(buf, src=GROUP_RANK0, stream=torch.cuda.current_stream())
                yield name, buf

        self.model_runner.reload_weights(weights_iterator=stream())  # type: ignore[attr-defined]
        torch.cuda.synchronize()
        return len(meta)
