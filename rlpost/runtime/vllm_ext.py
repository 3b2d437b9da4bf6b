"""Worker extension loaded into every vLLM worker (``worker_extension_cls``).

Weights arrive as a stream of buckets; each bucket is safetensors bytes (vLLM's RPC turns raw
tensors into lists) or a Ray object ref to such bytes. Loading goes through vLLM's own
``reload_weights`` so its loader reshards/repacks exactly as at start-up (``load_weights`` on the
model directly breaks on CPU, where weights are repacked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from rlpost.runtime.nccl_sync import NcclReceiverExtension


def _tensors(blob: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not isinstance(blob, (bytes, bytearray)):
        import ray

        blob = ray.get(blob)
    return load(bytes(blob))


def tensor_checksum(t: torch.Tensor) -> str:
    """Dtype-independent checksum: values rounded through bf16 then hashed."""
    data = t.detach().to(torch.bfloat16).float().contiguous().cpu().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


class WeightSyncExtension(NcclReceiverExtension):
    """Methods become callable through ``LLM.collective_rpc(name, args=...)``."""

    def rlpost_load_buckets(self, buckets: list[Any]) -> int:
        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for b in buckets:  # one bucket in memory at a time
                yield from _tensors(b).items()

        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for item in stream():
                count += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]
        return count

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
