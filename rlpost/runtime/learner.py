"""LearnerGroup: N DeepSpeed ZeRO ranks, one Ray actor each. Used for the policy and the critic.

Gradient convention: the objective layer divides by *global* counts, so the mini-batch loss is the
sum of every micro-batch loss on every rank. DeepSpeed averages gradients over ranks and (by
default) over accumulation steps, so each micro-batch loss is multiplied by the world size and
backpropagated with ``scale_wrt_gas=False``: the update is then independent of ranks × micro-batches.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray
import torch
from transformers.integrations import HfDeepSpeedConfig

from rlpost.batch import Batch, length_order
from rlpost.config import Config
from rlpost.models.hf import causal_logprobs, load_model
from rlpost.runtime import fault
from rlpost.runtime.perf import device_peak, engine_dtype, mfu, train_flops_per_token
from rlpost.runtime.vllm_ext import tensor_checksum
from rlpost.runtime.weight_group import (
    SRC,
    Bucket,
    WeightGroup,
    device_id,
    ipc_handle,
    pack,
    plan_from_wire,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


OPS_DIR_ENV = "TORCH_EXTENSIONS_DIR"


def use_venv_ops_dir() -> str | None:
    """Where DeepSpeed's JIT-built CPU ops live (on CPU: the shared-memory comm op every rank
    loads in ``init_distributed``). Torch's default is one directory per user, so two virtual
    environments on a machine rebuild the op (40-60 s on 2 cores) each time the other used it
    last. Inside a virtual environment the ops go to ``<venv>/torch_extensions`` instead, built
    once by ``make install`` (:func:`build_ds_ops`); an explicit TORCH_EXTENSIONS_DIR wins."""
    if OPS_DIR_ENV not in os.environ and sys.prefix != sys.base_prefix:
        if os.access(sys.prefix, os.W_OK):
            os.environ[OPS_DIR_ENV] = os.path.join(sys.prefix, "torch_extensions")
    return os.environ.get(OPS_DIR_ENV)


def build_ds_ops() -> list[str]:
    """Build (or find already built) the JIT ops a learner rank of this machine loads at start,
    so the first run does not compile them. Returns the ops' names."""
    use_venv_ops_dir()
    import deepspeed.ops  # heavy: only the install step and learner ranks pay for it
    from deepspeed.accelerator import get_accelerator

    built = []
    for name in ("ShareMemCommBuilder",):  # the optimizer is torch's AdamW: no CPUAdam op
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            continue
        builder.load()
        built.append(builder.absolute_name())
    return built


def skip_muon_compile() -> None:
    """``deepspeed.initialize`` imports DeepSpeed's Muon optimizer (to check the optimizer type),
    whose module wraps its kernels in ``torch.compile`` at import: all of inductor, 3-4 s of CPU
    per rank. The optimizer here is always AdamW (:func:`ds_config`), so the module is imported
    once with DeepSpeed's compile decorator as a no-op; Muon, if ever run, would run eagerly."""
    if "deepspeed.runtime.zero.muon.original_muon" in sys.modules:
        return
    from deepspeed.runtime import compiler  # heavy: only learner ranks pay for it

    real = compiler.compile
    compiler.compile = lambda: compiler.dummy_decorator
    try:
        import deepspeed.runtime.zero.muon.original_muon  # noqa: F401
    except ImportError:  # a DeepSpeed without Muon: nothing to skip
        pass
    finally:
        compiler.compile = real


def lr_lambda(warmup: int, total: int, shape: str):
    """Multiplier of the base LR at optimizer step s (0-based): linear warm-up over ``warmup``
    steps (the first step already trains: (s+1)/warmup), then constant, linear or cosine decay."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if shape == "constant":
            return 1.0
        p = min(1.0, (s - warmup) / max(1, total - warmup))
        return 1.0 - p if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))

    return f


def ds_config(cfg: Config, role: str, micro: int, gas: int, on_gpu: bool) -> dict:
    lrn = cfg.learner
    stage = cfg.critic.zero_stage if role == "critic" else lrn.zero_stage
    lr = cfg.critic.lr if role == "critic" else lrn.lr
    zero: dict[str, Any] = {"stage": stage}
    if lrn.offload and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(lrn.betas),
                "weight_decay": lrn.weight_decay,
                "torch_adam": True,
            },
        },
        "gradient_clipping": lrn.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if on_gpu and cfg.model.dtype in ("auto", "bfloat16"):
        conf["bf16"] = {"enabled": True}
    return conf


class LearnerWorker:
    """One DeepSpeed rank. ``role`` is 'policy' (causal LM) or 'critic' (token value head)."""

    def __init__(
        self,
        cfg: Config,
        role: str,
        rank: int,
        world: int,
        make_objective: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg, self.role, self.rank, self.world = cfg, role, rank, world
        threads = cfg.learner.torch_threads or max(1, int(round(cfg.learner.cpus_per_rank)))
        torch.set_num_threads(threads)
        self.on_gpu = torch.cuda.is_available() and cfg.learner.gpus_per_rank > 0
        self.device = torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")
        self.engine = None
        self._hf_ds = None
        self.make_objective = make_objective
        self.objective: Any = None

    @staticmethod
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    def master_address(self) -> tuple[str, int]:
        """Rank 0's node and a free port there: where the ranks' process group meets."""
        return self.node_ip(), free_port()

    def init(self, micro: int, gas: int, seed: int, master: tuple[str, int]) -> int:
        """Load the model and build the DeepSpeed engine (all ranks call this together;
        ``master`` is rank 0's :meth:`master_address`, passed as its object ref)."""
        t0 = time.time()
        use_venv_ops_dir()
        import deepspeed  # heavy: only learner ranks pay for it

        addr, port = master
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world),
            LOCAL_RANK="0",
            MASTER_ADDR=addr,
            MASTER_PORT=str(port),
        )
        t_import = time.time()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        torch.manual_seed(seed)
        conf = ds_config(self.cfg, self.role, micro, gas, self.on_gpu)
        if conf["zero_optimization"]["stage"] == 3:
            self._hf_ds = HfDeepSpeedConfig(conf)  # must stay alive through from_pretrained
        dtype = torch.bfloat16 if conf.get("bf16") else torch.float32
        if self.role == "critic":
            path = self.cfg.critic.path or self.cfg.model.path
            model = load_model(
                path, "value", dtype, trust_remote_code=self.cfg.model.trust_remote_code
            )
        else:
            model = load_model(
                self.cfg.model.path,
                "causal_lm",
                dtype,
                trust_remote_code=self.cfg.model.trust_remote_code,
            )
        t_load = time.time()
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        lrn = self.cfg.learner
        skip_muon_compile()
        schedule = lr_lambda(lrn.warmup_steps, self.cfg.trainer.steps * lrn.epochs, lrn.lr_schedule)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=conf,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        n = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full
        conf = model.config  # for perf/mfu on GPU
        self.flops_arch = (n, conf.num_hidden_layers, conf.hidden_size)
        if self.rank == 0:
            print(
                f"{self.role} rank 0 init: import deepspeed {t_import - t0:.1f}s, "
                f"process group + model load {t_load - t_import:.1f}s, "
                f"deepspeed.initialize {time.time() - t_load:.1f}s",
                flush=True,
            )
        return n

    # ------------------------------------------------------------------ forward
    def _forward(self, batch: Batch) -> torch.Tensor:
        ids = batch["input_ids"].to(self.device)
        attn = batch["attention_mask"].to(self.device)
        lrn = self.cfg.learner
        with torch.autocast(self.device.type, torch.bfloat16, enabled=lrn.autocast == "bf16"):
            if self.role == "critic":  # V(state before token t) sits at t, like log-probs
                out = self.engine(input_ids=ids, attention_mask=attn)
                return torch.nn.functional.pad(out.logits.squeeze(-1).float()[:, :-1], (1, 0))
            # the module itself (ZeRO-3 gathers through its hooks), so the output layer can run
            # in chunks; DeepSpeed's engine forward adds nothing the loss needs here
            return causal_logprobs(
                self.engine.module, ids, attn, self.cfg.rollout.temperature, lrn.logprob_chunk
            )

    def _micro_batches(self, batch: Batch, micro: int, row_multiple: int) -> tuple[list, list]:
        """Micro-batches (padding trimmed) and the row order they were cut in."""
        order = list(range(len(batch)))
        if self.cfg.learner.sort_by_length:
            order = length_order(batch, row_multiple)
            batch = batch.select(order)
        return [mb.trim() for mb in batch.split(micro)], order

    def _objective(self) -> Any:
        """What the driver said to minimise: an object with ``loss`` (policy) / ``critic_loss``
        (critic) over one micro-batch, built here once from the factory the group was given."""
        if self.objective is None:
            if self.make_objective is None:
                raise RuntimeError(f"{self.role} learner was given no objective to train")
            self.objective = self.make_objective()
        return self.objective

    @torch.no_grad()
    def forward(self, batch: Batch, micro: int) -> torch.Tensor:
        """Log-probs (policy) or values (critic) without grad, in micro-batches."""
        self.engine.eval()
        parts, order = self._micro_batches(batch, micro, 1)
        width = batch["input_ids"].shape[1]
        outs = [self._forward(b) for b in parts]
        out = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1])) for o in outs]).cpu()
        return out[torch.argsort(torch.tensor(order))]

    def train(
        self, minibatches: list[Batch], counts: list[dict], micro: int, row_multiple: int = 1
    ) -> dict[str, float]:
        """One optimizer step per mini-batch shard; returns mean metrics.

        The accumulation boundary is set explicitly (the last micro-batch of a shard), so shards
        of any size work; every rank gets the same number of rows (the group pads), hence the
        same number of forward passes, which ZeRO-3's collective gathers need.
        """
        self.engine.train()
        objective = self._objective()
        micro = max(row_multiple, micro - micro % row_multiple)
        sums: dict[str, float] = {}
        norms: list[float] = []
        n = 0
        t0, flops = time.perf_counter(), 0.0
        for shard, cnt in zip(minibatches, counts):
            parts, _ = self._micro_batches(shard, micro, row_multiple)
            for i, mb in enumerate(parts):
                self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
                mb = mb.to(self.device)
                out = self._forward(mb)
                if self.role == "critic":
                    loss, metrics = objective.critic_loss(out, mb, cnt)
                else:
                    loss, metrics = objective.loss(out, mb, cnt)
                self.engine.backward(loss * self.world, scale_wrt_gas=False)
                self.engine.step()
                seq = mb["attention_mask"]
                flops += float(seq.sum()) * train_flops_per_token(*self.flops_arch, seq.shape[1])
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            gn = self.engine.get_global_grad_norm()
            if gn is not None:
                norms.append(float(gn))
        # loss/* terms are parts of a sum (global denominators): per mini-batch total, not mean
        shards = max(len(minibatches), 1)
        out_m = {k: v / (shards if k.startswith("loss/") else max(n, 1)) for k, v in sums.items()}
        if norms:
            out_m["grad_norm"] = sum(norms) / len(norms)
        out_m["lr"] = float(self.engine.get_lr()[0])
        if self.on_gpu:  # MFU is a GPU figure; each rank's share of its own GPU
            torch.cuda.synchronize()
            seconds, (peak, _) = time.perf_counter() - t0, device_peak()
            out_m["perf/learner_tflops"] = flops / seconds / 1e12
            if peak:  # an unknown GPU (no RLPOST_PEAK_TFLOPS) still gets achieved TFLOP/s
                out_m["perf/mfu"] = mfu(1.0, flops, seconds, peak)
            out_m["perf/learner_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return out_m

    # ------------------------------------------------------------------ weights
    def export_weights(self, bucket_mb: float) -> list:
        """Gather (ZeRO-3) and cut the HF state dict into safetensors buckets in the object store.
        Every rank must call this (the gather is collective); rank 0 returns the refs."""
        import deepspeed
        from safetensors.torch import save

        model = self.engine.module
        params = list(model.named_parameters())
        stage3 = self.engine.zero_optimization_stage() == 3
        limit = bucket_mb * 2**20
        wire_dtype = self._engine_torch_dtype()
        refs, bucket, size = [], {}, 0
        for name, p in params:
            if stage3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    t = p.detach().to("cpu", copy=True).contiguous()
            else:
                t = p.detach().to("cpu", copy=True).contiguous()
            if self.rank != 0:
                continue
            if wire_dtype is not None:
                t = t.to(wire_dtype)  # the engine's dtype: half the bytes for bf16, no recast there
            bucket[name] = t
            size += t.numel() * t.element_size()
            if self.tied and name == "model.embed_tokens.weight":
                bucket["lm_head.weight"] = t.clone()  # vLLM keeps its own lm_head copy
                size += t.numel() * t.element_size()
            if size >= limit:
                refs.append(ray.put(save(bucket)))
                bucket, size = {}, 0
        if bucket and self.rank == 0:
            refs.append(ray.put(save(bucket)))
        return refs

    def _engine_torch_dtype(self) -> torch.dtype | None:
        """The dtype the engines hold, which weights travel in (bf16 halves the bytes); None when
        ``rollout.dtype`` names no torch dtype (then each parameter's own)."""
        wire = getattr(torch, engine_dtype(self.cfg.rollout.dtype), None)
        return wire if isinstance(wire, torch.dtype) else None

    def weight_meta(self) -> tuple[list[tuple[str, str, list[int]]], dict[str, list[str]]]:
        """(name, wire dtype, full shape) of every parameter (ZeRO-3 shards report ``ds_shape``),
        and the aliases that travel without bytes of their own: with tied embeddings vLLM keeps
        its own ``lm_head`` copy, loaded from the embedding's bytes."""
        model = self.engine.module
        wire = self._engine_torch_dtype()
        meta = [
            (n, str(wire or p.dtype).removeprefix("torch."), list(getattr(p, "ds_shape", p.shape)))
            for n, p in model.named_parameters()
        ]
        aliases: dict[str, list[str]] = {}
        if self.tied:
            emb = model.get_input_embeddings().weight
            name = next(n for n, p in model.named_parameters() if p is emb)
            aliases[name] = ["lm_head.weight"]
        return meta, aliases

    def _gathered(self, plan: list[Bucket]) -> Iterator[tuple[Bucket, list[torch.Tensor]]]:
        """Each bucket's full parameters; under ZeRO-3 one gather per bucket (every rank must
        iterate: the gather is collective), released before the next."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        stage3 = self.engine.zero_optimization_stage() == 3
        for bucket in plan:
            ps = [params[n] for n in bucket.names]
            if stage3:
                with deepspeed.zero.GatheredParameters(ps, modifier_rank=None):
                    yield bucket, ps
            else:
                yield bucket, ps

    def device_id(self) -> str:
        return device_id(self.device)

    def weight_group_address(self) -> tuple[str, int]:
        """Where rank 0 hosts the weight-update group's store (a free port on its node)."""
        return self.node_ip(), free_port()

    def weight_group_init(self, host: str, port: int, world: int, timeout_s: float) -> None:
        if self.rank == 0:
            self.weight_group = WeightGroup(host, port, SRC, world, self.device, timeout_s)

    def broadcast_weights(self, wire_plan: list[dict]) -> int:
        """One broadcast per flat bucket from rank 0; bytes sent (0 on other ranks)."""
        sent = 0
        for bucket, ps in self._gathered(plan_from_wire(wire_plan)):
            if self.rank == 0:
                self.weight_group.broadcast(pack(bucket, ps, self.device))
                sent += bucket.nbytes
        return sent

    def ipc_handles(self, wire_plan: list[dict]) -> tuple[str, list]:
        """Colocated GPU: pack every bucket on this rank's GPU and keep the buffers alive until
        ``ipc_release``; the engines on this GPU map them through the returned handles."""
        self._ipc_bufs = [
            pack(b, ps, self.device) for b, ps in self._gathered(plan_from_wire(wire_plan))
        ]
        torch.cuda.synchronize()
        return self.device_id(), [ipc_handle(b) for b in self._ipc_bufs]

    def ipc_release(self) -> None:
        self._ipc_bufs = []
        torch.cuda.empty_cache()

    def checksums(self, names: list[str]) -> dict[str, str]:
        import deepspeed

        out = {}
        stage3 = self.engine.zero_optimization_stage() == 3
        for name, p in self.engine.module.named_parameters():
            if name in names:
                if stage3:
                    with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                        out[name] = tensor_checksum(p)
                else:
                    out[name] = tensor_checksum(p)
        return out

    def param_names(self) -> list[str]:
        return [n for n, _ in self.engine.module.named_parameters()]

    def save(self, path: str, client_state: dict) -> None:
        self.engine.save_checkpoint(path, tag="ds", client_state=client_state)

    def load(self, path: str) -> dict:
        _, client = self.engine.load_checkpoint(path, tag="ds")
        return client or {}

    def export_hf(self, path: str) -> None:
        import deepspeed

        model = self.engine.module
        if self.engine.zero_optimization_stage() == 3:
            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                if self.rank == 0:
                    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            sd = model.state_dict() if self.rank == 0 else None
        if self.rank == 0:
            model.save_pretrained(path, state_dict=sd)


class LearnerGroup:
    """N ranks of ``LearnerWorker``; the driver sees one object with collective methods.

    A rank that dies takes the whole group down with it (the survivors sit in a collective that
    will never complete): every rank is killed and rebuilt on its bundle, and :class:`fault.Rewind`
    tells the trainer to reload the last checkpoint (``trainer.max_restarts`` times)."""

    def __init__(
        self,
        cfg: Config,
        role: str = "policy",
        placed: Any = None,
        group: str = "learner",
        make_objective: Callable[[], Any] | None = None,
        on_create: Callable[[LearnerGroup], None] | None = None,
        wait: bool = True,
    ):
        """``make_objective`` builds, inside each rank, the object whose ``loss`` (or
        ``critic_loss``) the rank minimises: the learner runs a loss, it never picks one.
        ``wait=False`` only launches the ranks: the caller waits on ``self.starting``
        (:func:`fault.wait_started`), so other groups start meanwhile."""
        self.cfg = cfg
        self.role = role
        self.placed, self.group = placed, group
        self.make_objective = make_objective
        self.guard = fault.Guard(cfg, group)
        lrn = cfg.learner
        self.world = cfg.critic.ranks if role == "critic" else lrn.ranks
        rows = cfg.trainer.prompts_per_step * cfg.rollout.n
        mini = lrn.mini_batch_size or rows
        per_rank = mini // self.world
        self.micro = min(lrn.micro_batch_size, per_rank)
        self.gas = per_rank // self.micro
        self.mini = mini
        self.workers: list[Any] = []
        if on_create is not None:
            on_create(self)  # registered for teardown before anything blocks
        self.startup_s = 0.0
        self.starting = self._launch()
        if wait:
            self._finish_start()

    def _launch(self) -> fault.Starting:
        """Create every rank and submit its ``init`` without waiting: rank 0 finds its address
        and the other ranks' ``init`` takes it as an object ref, so nothing blocks here."""
        cfg, lrn = self.cfg, self.cfg.learner
        self._launched = time.time()
        actor = ray.remote(LearnerWorker)
        self.workers = []
        for rank in range(self.world):
            opts: dict[str, Any] = {"num_cpus": lrn.cpus_per_rank, "num_gpus": lrn.gpus_per_rank}
            if self.placed is not None:
                opts["scheduling_strategy"] = self.placed.strategy(self.group, rank)
            self.workers.append(  # killed by shutdown if interrupted from here on
                actor.options(**opts).remote(cfg, self.role, rank, self.world, self.make_objective)
            )
        master = self.workers[0].master_address.remote()
        inits = [
            w.init.remote(self.micro, self.gas, cfg.trainer.seed, master) for w in self.workers
        ]
        names = [f"{self.group}[{r}]" for r in range(self.world)]
        return fault.Starting(self.group, names, inits, self._started)

    def _started(self, results: list) -> None:
        self.startup_s = time.time() - self._launched
        self.num_params = results[0]
        self.builds = getattr(self, "builds", 0) + 1  # rebuilt ranks are new processes

    def _finish_start(self) -> None:
        """Wait for ``init`` on every rank (alone; :func:`fault.wait_started` waits for several
        groups at once). A rank that dies here rebuilds the group like any other call."""
        self._started(self._get(self.starting.refs, "init", self.guard.start_timeout_s))

    def _build(self) -> None:
        """Create and initialise every rank (after a rank died, or a rewind to the start)."""
        self.starting = self._launch()
        self._finish_start()

    def guards(self) -> list[fault.Guard]:
        return [self.guard]

    def rebuild(self) -> None:
        """Fresh ranks with the initial weights (a rewind to the start of the run)."""
        fault.kill_quietly(self.workers)
        self._build()

    def _get(self, refs: list, what: str, timeout_s: float | None = None) -> list:
        """Wait for one call on every rank; a dead rank rebuilds the group and raises Rewind."""
        try:
            return self.guard.get_all(refs, f"{self.group} ranks ({what})", timeout_s)
        except ray.exceptions.RayError as err:
            # a survivor's collective fails too ("connection closed by peer"): find the death
            e = err if isinstance(err, fault.DEATH) else fault.find_death(refs)
            if e is None:
                raise
            rank = _dead_rank(e, self.workers)
            self.guard.spend(f"{self.group}[{rank}]", e)
            self.rebuild()
            raise fault.Rewind(self.group, f"{self.group}[{rank}]", fault.cause_of(e)) from e

    def forward(self, batch: Batch) -> torch.Tensor:
        """No-grad log-probs/values of a whole batch, split across ranks."""
        parts = _even_chunks(batch, self.world)
        outs = self._get(
            [w.forward.remote(p, self.micro) for w, p in zip(self.workers, parts)], "forward"
        )
        width = batch["input_ids"].shape[1]
        return torch.cat(
            [torch.nn.functional.pad(o, (0, width - o.shape[1])) for o in outs if len(o)]
        )

    def train_step(self, batch: Batch, epochs: int, seed: int, row_multiple: int = 1) -> dict:
        """Epochs over shuffled mini-batches; each mini-batch split across ranks with global counts."""
        g = torch.Generator().manual_seed(seed)
        units = len(batch) // row_multiple
        per_rank: list[list[Batch]] = [[] for _ in self.workers]
        counts: list[dict] = []
        mini_units = max(1, self.mini // row_multiple) if self.mini <= len(batch) else units
        for _ in range(epochs):
            perm = torch.randperm(units, generator=g).tolist()
            for s in range(0, units, mini_units):
                idx = [
                    u * row_multiple + j
                    for u in perm[s : s + mini_units]
                    for j in range(row_multiple)
                ]
                mb = batch.select(idx)
                mask = mb["response_mask"]
                cnt = {
                    "num_tokens": int(mask.sum().item()),
                    "num_seqs": len(mb),
                    "max_len": int(self.cfg.rollout.max_new_tokens),
                }
                counts.append(cnt)
                mb = _pad_rows(mb, self.world * row_multiple)
                for r, part in enumerate(_even_chunks(mb, self.world, row_multiple)):
                    per_rank[r].append(part)
        refs = [ray.put(p) for p in per_rank]
        results = self._get(
            [
                w.train.remote(ref, counts, self.micro, row_multiple)
                for w, ref in zip(self.workers, refs)
            ],
            "train",
        )
        return {
            k: sum(r.get(k, 0.0) for r in results) / (1 if k.startswith("loss/") else len(results))
            for k in results[0]
        }

    def export_weights(self, bucket_mb: float) -> list:
        return self._get([w.export_weights.remote(bucket_mb) for w in self.workers], "export")[0]

    def checksums(self, names: list[str]) -> dict[str, str]:
        return self._get([w.checksums.remote(names) for w in self.workers], "checksums")[0]

    def param_names(self) -> list[str]:
        return self._get([self.workers[0].param_names.remote()], "param_names")[0]

    def weight_meta(self) -> tuple[list, dict[str, list[str]]]:
        return self._get([self.workers[0].weight_meta.remote()], "weight_meta")[0]

    def device_ids(self) -> list[str]:
        return self._get([w.device_id.remote() for w in self.workers], "device_ids")

    def weight_group_address(self) -> tuple[str, int]:
        return self._get([self.workers[0].weight_group_address.remote()], "weight_group")[0]

    def weight_group_init(self, host: str, port: int, world: int, timeout_s: float) -> list:
        return [w.weight_group_init.remote(host, port, world, timeout_s) for w in self.workers]

    def broadcast_weights(self, wire_plan: list[dict]) -> list:
        """Futures (every rank gathers; rank 0 sends); wait on them with the engines' receives."""
        return [w.broadcast_weights.remote(wire_plan) for w in self.workers]

    def ipc_handles(self, wire_plan: list[dict]) -> bytes:
        """Pickled {device id: handles}: vLLM's worker RPC carries bytes, not handle tuples."""
        return pickle.dumps(dict(ray.get([w.ipc_handles.remote(wire_plan) for w in self.workers])))

    def ipc_release(self) -> None:
        ray.get([w.ipc_release.remote() for w in self.workers])

    def save(self, path: str, client_state: dict) -> None:
        self._get([w.save.remote(path, client_state) for w in self.workers], "save")

    def load(self, path: str) -> dict:
        return self._get([w.load.remote(path) for w in self.workers], "load")[0]

    def export_hf(self, path: str) -> None:
        self._get([w.export_hf.remote(path) for w in self.workers], "export_hf")

    def shutdown(self) -> None:
        fault.kill_quietly(self.workers)
        self.workers = []


def _dead_rank(err: BaseException, workers: list) -> int | str:
    """Which rank an actor-death error is about (Ray names the actor id), else '?'."""
    dead = getattr(err, "actor_id", None)
    for rank, w in enumerate(workers):
        if dead and w._actor_id.hex() == dead:
            return rank
    return "?"


def _even_chunks(batch: Batch, n: int, row_multiple: int = 1) -> list[Batch]:
    """Split rows into n contiguous parts (sizes differ by at most one unit)."""
    units = len(batch) // row_multiple
    bounds = [round(i * units / n) * row_multiple for i in range(n + 1)]
    return [batch.slice(bounds[i], bounds[i + 1]) for i in range(n)]


def _pad_rows(batch: Batch, multiple: int) -> Batch:
    """Pad with copies of leading rows whose response_mask is 0: they add nothing to any loss
    (global counts exclude them) but give every rank the same number of forward passes."""
    extra = (-len(batch)) % multiple
    if not extra:
        return batch
    pad = batch.select(list(range(extra)))
    pad.tensors["response_mask"] = torch.zeros_like(pad.tensors["response_mask"])
    return Batch.concat([batch, pad])
