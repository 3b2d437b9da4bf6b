"""Worker extension loaded into every vLLM worker (``worker_extension_cls``).

Three ways in, one way to load: every transport ends in a stream of (HF name, tensor) fed to
vLLM's own ``reload_weights``, so its loader fuses, reshards and repacks exactly as at start-up
(``load_weights`` on the model directly breaks on CPU, where weights are repacked).

- object store: each bucket is safetensors bytes (vLLM's RPC turns raw tensors into lists) or a
  Ray object ref to such bytes;
- collective: one broadcast per flat bucket in the weight-update group (weight_group.py);
- CUDA IPC: handles to flat buckets the learner packed on this GPU, mapped without a copy.

Each call returns how many tensors it loaded; the engine actor checks that against the plan.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import ray
import torch

from rlpost.runtime.weight_group import (
    WeightGroup,
    device_id,
    open_ipc_handle,
    plan_from_wire,
    unpack,
)


def _tensors(blob: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not isinstance(blob, (bytes, bytearray)):
        blob = ray.get(blob)
    return load(bytes(blob))


def tensor_checksum(t: torch.Tensor) -> str:
    """Dtype-independent checksum: values rounded through bf16 then hashed."""
    data = t.detach().to(torch.bfloat16).float().contiguous().cpu().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


class WeightSyncExtension:
    """Methods become callable through ``LLM.collective_rpc(name, args=...)``."""

    def _rlpost_device(self) -> torch.device:
        return next(self.model_runner.model.parameters()).device  # type: ignore[attr-defined]

    def _rlpost_reload(self, items: Iterable[tuple[str, torch.Tensor]]) -> int:
        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for item in items:
                count += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        if self._rlpost_device().type == "cuda":
            torch.cuda.synchronize()
        return count

    # ------------------------------------------------------------------ object store
    def rlpost_load_buckets(self, buckets: list[Any]) -> int:
        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for b in buckets:  # one bucket in memory at a time
                yield from _tensors(b).items()

        return self._rlpost_reload(stream())

    # ------------------------------------------------------------------ collective
    def rlpost_device_id(self) -> str:
        return device_id(self._rlpost_device())

    def rlpost_group_init(
        self, host: str, port: int, rank_offset: int, world: int, timeout_s: float
    ) -> int:
        """Join the weight-update group as rank ``rank_offset`` + this worker's TP rank."""
        rank = rank_offset + self.rank  # type: ignore[attr-defined]
        self._rlpost_group = WeightGroup(host, port, rank, world, self._rlpost_device(), timeout_s)
        return rank

    def rlpost_group_receive(self, wire_plan: list[dict], load: bool = True) -> int:
        """Receive every bucket of the plan; ``load=False`` drains them (a refused, stale sync:
        the sender still needs every member to take part in each broadcast)."""
        stream = self._rlpost_group.receive(plan_from_wire(wire_plan))
        if not load:
            for _ in stream:
                pass
            return 0
        return self._rlpost_reload(stream)

    # ------------------------------------------------------------------ CUDA IPC
    def rlpost_ipc_receive(self, handles: bytes, wire_plan: list[dict]) -> int:
        """``handles``: pickled {device id: [one IPC handle per bucket]} from the learner ranks;
        this worker maps the buffers that live on its own GPU."""
        by_device = pickle.loads(handles)
        mine = self.rlpost_device_id()
        if mine not in by_device:
            raise RuntimeError(f"CUDA IPC: no learner rank on this engine's GPU {mine}")
        index = torch.cuda.current_device()
        plan = plan_from_wire(wire_plan)

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket, handle in zip(plan, by_device[mine], strict=True):
                yield from unpack(bucket, open_ipc_handle(handle, index))

        return self._rlpost_reload(stream())

    # ------------------------------------------------------------------ checks
    def rlpost_checksums(self, names: list[str]) -> dict[str, str]:
        """Checksums of the engine's weights under HF names (for the sync test)."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        params = dict(model.named_parameters())
        out = {}
        for name in names:
            if name in params and params[name].numel() > 0:  # repacked weights leave empty shells
                out[name] = tensor_checksum(params[name])
        return out

    def rlpost_param_names(self) -> list[str]:
        return [n for n, _ in self.model_runner.model.named_parameters()]  # type: ignore[attr-defined]
