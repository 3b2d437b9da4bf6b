"""Flat weight buckets: layout, exact round trips, the weight-update group over gloo, and the
transport choice. No Ray, no vLLM: the group is two plain processes."""

from __future__ import annotations

import multiprocessing as mp
import socket

import pytest
import torch

from rlpost.config import ConfigError
from rlpost.runtime.sync import choose_transport
from rlpost.runtime.weight_group import (
    ALIGN,
    WeightGroup,
    count_loaded,
    pack,
    plan_buckets,
    plan_from_wire,
    plan_to_wire,
    unpack,
)

MB = 2**20


def _round_trip(meta, tensors, bucket_bytes, aliases=None):
    plan = plan_from_wire(plan_to_wire(plan_buckets(meta, bucket_bytes, aliases)))
    out = {}
    for b in plan:
        buf = pack(b, [tensors[n] for n in b.names])
        assert buf.dtype == torch.uint8 and buf.numel() == b.nbytes
        out.update({n: t.clone() for n, t in unpack(b, buf)})
    return plan, out


def test_tensor_larger_than_a_bucket_gets_a_bucket_of_its_own_and_round_trips_exactly():
    torch.manual_seed(0)
    big = torch.randn(300, 1000)  # 1.2 MB, bucket 1 MB
    meta = [
        ("small.a", "float32", [10]),
        ("big", "float32", [300, 1000]),
        ("small.b", "float32", [3]),
    ]
    tensors = {"small.a": torch.randn(10), "big": big, "small.b": torch.randn(3)}
    plan, out = _round_trip(meta, tensors, 1 * MB)
    assert [b.names for b in plan] == [("small.a",), ("big",), ("small.b",)]
    assert plan[1].nbytes == big.numel() * 4  # exactly its size, never split
    for n, t in tensors.items():
        assert torch.equal(out[n], t), n


def test_many_tiny_tensors_share_buckets_at_aligned_offsets():
    torch.manual_seed(1)
    meta = [(f"p{i}", "float32", [i % 7 + 1]) for i in range(500)]
    tensors = {n: torch.randn(s) for n, _, s in meta}
    plan, out = _round_trip(meta, tensors, 4096)
    # 500 tensors of ≤ 28 bytes, each slot padded to 64 bytes: 64 per 4096-byte bucket
    assert len(plan) == 8 and all(len(b.slots) <= 4096 // ALIGN for b in plan)
    assert all(s.offset % ALIGN == 0 for b in plan for s in b.slots)
    assert all(b.nbytes <= 4096 for b in plan)
    assert [n for b in plan for n in b.names] == [n for n, _, _ in meta]  # order kept
    assert all(torch.equal(out[n], t) for n, t in tensors.items())


def test_tied_embeddings_travel_once_and_load_under_both_names():
    emb = torch.randn(50, 8)
    meta = [
        ("model.embed_tokens.weight", "float32", [50, 8]),
        ("model.norm.weight", "float32", [8]),
    ]
    tensors = {"model.embed_tokens.weight": emb, "model.norm.weight": torch.ones(8)}
    aliases = {"model.embed_tokens.weight": ["lm_head.weight"]}
    plan, out = _round_trip(meta, tensors, MB, aliases)
    assert sum(b.nbytes for b in plan) == 50 * 8 * 4 + 8 * 4  # the embedding once (aligned)
    assert torch.equal(out["lm_head.weight"], emb) and torch.equal(
        out["model.embed_tokens.weight"], emb
    )
    assert count_loaded(plan) == 3


def test_mixed_dtypes_cast_to_the_wire_dtype_exactly():
    x = torch.randn(33, dtype=torch.float32)
    meta = [("x", "bfloat16", [33]), ("i", "int64", [5]), ("h", "float16", [2, 3])]
    tensors = {"x": x, "i": torch.arange(5), "h": torch.randn(2, 3).half()}
    _, out = _round_trip(meta, tensors, MB)
    assert out["x"].dtype == torch.bfloat16 and torch.equal(out["x"], x.to(torch.bfloat16))
    assert torch.equal(out["i"], torch.arange(5)) and torch.equal(out["h"], tensors["h"])


def test_pack_refuses_a_tensor_of_the_wrong_shape():
    plan = plan_buckets([("w", "float32", [4, 4])], MB)
    with pytest.raises(ValueError, match="w: shape"):
        pack(plan[0], [torch.zeros(16)])


def _member(rank: int, port: int, meta, bucket_bytes: int, q) -> None:
    torch.set_num_threads(1)
    plan = plan_buckets(meta, bucket_bytes)
    group = WeightGroup("127.0.0.1", port, rank, 3, torch.device("cpu"), 60)
    if rank == 0:
        g = torch.Generator().manual_seed(3)
        for b in plan:
            group.broadcast(
                pack(
                    b,
                    [
                        torch.randn(s, generator=g)
                        for _, _, s in [m for m in meta if m[0] in b.names]
                    ],
                )
            )
        q.put((rank, None))
    else:
        # numpy arrays pickle by value; torch tensors would pass a shared-memory fd that dies
        # with this process
        q.put((rank, {n: t.numpy().copy() for n, t in group.receive(plan)}))


def test_weight_group_over_gloo_delivers_every_bucket_to_every_member():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    meta = [("a", "float32", [100, 30]), ("b", "float32", [7]), ("c", "float32", [5000])]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, port, meta, 16 * 1024, q)) for r in range(3)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    g = torch.Generator().manual_seed(3)
    want = {n: torch.randn(s, generator=g) for n, _, s in meta}
    for rank in (1, 2):
        assert set(got[rank]) == set(want)
        assert all(torch.equal(torch.from_numpy(got[rank][n]), want[n]) for n in want), rank


CPU1, GPU_A, GPU_B, GPU_C = "cpu", "GPU-a", "GPU-b", "GPU-c"


@pytest.mark.parametrize(
    ("requested", "learners", "engines", "expected"),
    [
        ("auto", [CPU1, CPU1], [CPU1], "collective"),  # CPU: separate processes, gloo
        ("auto", [GPU_A], [GPU_B, GPU_C], "collective"),  # split GPUs: NCCL
        ("auto", [GPU_A, GPU_B], [GPU_B, GPU_C], "collective"),  # rank 1's GPU is no member
        ("auto", [GPU_A], [GPU_B, GPU_B], "object_store"),  # two engines on one GPU: no NCCL
        ("auto", [GPU_A, GPU_B], [GPU_A, GPU_B], "ipc"),  # colocated on every GPU
        ("auto", [GPU_A], [GPU_A], "ipc"),  # one GPU, split mode: NCCL cannot, IPC can
        ("auto", [GPU_A], [GPU_A, GPU_B], "object_store"),  # mixed: fallback, said so
        ("object_store", [CPU1], [CPU1], "object_store"),
    ],
)
def test_transport_follows_where_the_actors_landed(requested, learners, engines, expected):
    assert choose_transport(requested, learners, engines)[0] == expected


def test_impossible_transports_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="rollout.sync_transport: ipc"):
        choose_transport("ipc", [CPU1], [CPU1])
    with pytest.raises(ConfigError, match="NCCL refuses two ranks on one device"):
        choose_transport("collective", [GPU_A], [GPU_A])


def test_ipc_on_cpu_is_refused_before_any_actor_starts():
    from pathlib import Path

    from rlpost.config import load_config

    recipe = Path(__file__).resolve().parents[3] / "launch/recipes/grpo_tiny.yaml"
    with pytest.raises(ConfigError, match="rollout.sync_transport: ipc"):
        load_config(recipe, ["rollout.sync_transport=ipc"])


def test_rollout_dtype_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    """``rollout.dtype=auto``: bf16 on a GPU or a CPU with bf16 instructions, fp32 on other CPUs
    (emulated bf16 made vLLM-CPU 3.2x slower there); an explicit dtype is kept as given."""
    from rlpost.runtime import perf

    monkeypatch.setattr(perf.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(perf, "cpu_has_bf16", lambda: False)
    assert perf.engine_dtype("auto") == "float32"
    assert perf.engine_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(perf, "cpu_has_bf16", lambda: True)
    assert perf.engine_dtype("auto") == "bfloat16"
    assert perf.engine_dtype("float32") == "float32"
    monkeypatch.setattr(perf, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(perf.torch.cuda, "is_available", lambda: True)
    assert perf.engine_dtype("auto") == "bfloat16"


def test_cpu_bf16_detection_reads_the_cpu_flags():
    from rlpost.runtime.perf import cpu_has_bf16

    flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
