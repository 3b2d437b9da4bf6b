"""The pieces of weight sync that both ends share: flat buckets, the weight-update group, and
CUDA IPC handles.

- **Flat buckets.** Parameters travel as one contiguous uint8 buffer per bucket, so a sync is one
  collective call per bucket, not one per tensor. ``plan_buckets`` lays the buffers out from
  (name, dtype, shape) alone, so the learner and every engine agree on the layout before any byte
  moves; ``pack`` and ``unpack`` are exact inverses.
- **The weight-update group.** Learner rank 0 and every vLLM worker join a process group of their
  own: its own ``TCPStore`` (hosted by learner rank 0), its own ranks, built from torch's
  ``ProcessGroupGloo`` / ``ProcessGroupNCCL`` objects directly, never registered as anyone's
  default group, so neither DeepSpeed's world nor vLLM's is touched. gloo on CPU, NCCL on GPU:
  the same code.
- **CUDA IPC.** When an engine shares the learner's GPU, rank 0 packs the buckets on that GPU and
  hands the engine IPC handles; the engine maps the same memory (zero copy).

Imports torch only; never Ray, vLLM or DeepSpeed (both ends import this module).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.reductions import reduce_tensor

ALIGN = 64  # bytes: every slot starts aligned, so a uint8 slice can be viewed as any dtype
SRC = 0  # learner rank 0 is rank 0 of the weight-update group


@dataclass(frozen=True)
class Slot:
    """One tensor inside a bucket; ``aliases`` are extra names loaded from the same bytes
    (tied embeddings: ``lm_head.weight`` travels once, as ``model.embed_tokens.weight``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bucket:
    slots: tuple[Slot, ...]
    nbytes: int
    names: tuple[str, ...] = field(default=())  # the learner parameters it holds, in order


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"not a torch dtype: {name}")
    return dt


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_buckets(
    meta: Sequence[tuple[str, str, Sequence[int]]],
    bucket_bytes: int,
    aliases: dict[str, list[str]] | None = None,
) -> list[Bucket]:
    """Cut (name, dtype, shape) into buckets of at most ``bucket_bytes``; a tensor larger than
    that gets a bucket of its own (its exact size), never split."""
    aliases = aliases or {}
    buckets: list[Bucket] = []
    slots: list[Slot] = []
    used = 0

    def close() -> None:
        nonlocal slots, used
        if slots:
            buckets.append(Bucket(tuple(slots), used, tuple(s.name for s in slots)))
        slots, used = [], 0

    for name, dtype, shape in meta:
        shape = tuple(int(d) for d in shape)
        nbytes = _dtype(dtype).itemsize * int(torch.Size(shape).numel())
        if slots and _aligned(used) + nbytes > bucket_bytes:
            close()
        offset = _aligned(used)
        slots.append(Slot(name, dtype, shape, offset, nbytes, tuple(aliases.get(name, ()))))
        used = offset + nbytes
    close()
    return buckets


def pack(bucket: Bucket, tensors: Sequence[torch.Tensor], device: Any = "cpu") -> torch.Tensor:
    """The bucket's flat uint8 buffer on ``device`` (tensors in slot order, cast to slot dtype)."""
    buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
    for slot, t in zip(bucket.slots, tensors, strict=True):
        if tuple(t.shape) != slot.shape:
            raise ValueError(f"{slot.name}: shape {tuple(t.shape)}, planned {slot.shape}")
        src = t.detach().to(device=device, dtype=_dtype(slot.dtype)).contiguous()
        buf[slot.offset : slot.offset + slot.nbytes].copy_(src.reshape(-1).view(torch.uint8))
    return buf


def unpack(bucket: Bucket, buf: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into ``buf`` (no copy), aliases after their source tensor."""
    if buf.numel() != bucket.nbytes:
        raise ValueError(f"bucket of {buf.numel()} bytes, planned {bucket.nbytes}")
    for slot in bucket.slots:
        raw = buf[slot.offset : slot.offset + slot.nbytes]
        t = raw.view(_dtype(slot.dtype)).view(slot.shape)
        yield slot.name, t
        for alias in slot.aliases:
            yield alias, t


def count_loaded(plan: Sequence[Bucket]) -> int:
    """Number of (name, tensor) pairs the engine loads for a plan (aliases included)."""
    return sum(1 + len(s.aliases) for b in plan for s in b.slots)


# ---------------------------------------------------------------------- the weight-update group
def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class WeightGroup:
    """A stateless process group: rank 0 (learner rank 0) hosts the store; ranks 1.. are the
    engine workers. ``broadcast`` sends/receives one flat buffer from rank 0."""

    def __init__(
        self, host: str, port: int, rank: int, world: int, device: torch.device, timeout_s: float
    ) -> None:
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(
            host, port, world, is_master=rank == SRC, timeout=timeout, wait_for_workers=False
        )
        store = dist.PrefixStore("rlpost-weights", store)
        self.rank, self.world, self.device = rank, world, device
        self.backend = backend_for(device)
        if self.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(store, rank, world, opts)
        else:
            self.pg = dist.ProcessGroupGloo(store, rank, world, timeout)
        self._store = store  # the group reads the store for its whole life
        # One tiny broadcast now: a member that cannot reach the others fails at start, not mid-run.
        self.broadcast(torch.zeros(1, dtype=torch.uint8, device=device))

    def broadcast(self, buf: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = SRC, 0
        self.pg.broadcast([buf], opts).wait()
        if buf.is_cuda:
            torch.cuda.current_stream().synchronize()

    def receive(self, plan: Sequence[Bucket]) -> Iterator[tuple[str, torch.Tensor]]:
        """Engine side: one broadcast per bucket, each unpacked as it arrives."""
        for bucket in plan:
            buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
            self.broadcast(buf)
            yield from unpack(bucket, buf)


# ---------------------------------------------------------------------- CUDA IPC (colocated GPU)
def ipc_handle(buf: torch.Tensor) -> Any:
    """A picklable handle to a CUDA tensor another process on the same GPU can map."""

    return reduce_tensor(buf)


def open_ipc_handle(handle: Any, device_index: int) -> torch.Tensor:
    """Map a tensor from ``ipc_handle``. The handle carries the sender's device index, which
    differs from ours when the two processes see different CUDA_VISIBLE_DEVICES; the memory is
    the same, so the index is replaced by this process's device."""
    rebuild, args = handle
    args = list(args)
    args[6] = (
        device_index  # rebuild_cuda_tensor(tensor_cls, size, stride, offset, storage_cls, dtype, device, ...)
    )
    return rebuild(*args)


def plan_to_wire(plan: Sequence[Bucket]) -> list[dict]:
    """Plain lists and dicts: vLLM's RPC to multi-process workers serialises only those."""
    return [
        {
            "nbytes": b.nbytes,
            "slots": [
                [s.name, s.dtype, list(s.shape), s.offset, s.nbytes, list(s.aliases)]
                for s in b.slots
            ],
        }
        for b in plan
    ]


def plan_from_wire(wire: Sequence[dict]) -> list[Bucket]:
    plan = []
    for b in wire:
        slots = tuple(
            Slot(n, d, tuple(shape), off, nb, tuple(al)) for n, d, shape, off, nb, al in b["slots"]
        )
        plan.append(Bucket(slots, int(b["nbytes"]), tuple(s.name for s in slots)))
    return plan


def device_id(device: torch.device) -> str:
    """Which physical device this is, comparable across processes ('cpu' on CPU)."""
    if device.type != "cuda":
        return "cpu"
    return str(torch.cuda.get_device_properties(device).uuid)
