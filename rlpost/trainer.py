"""The training loop, top to bottom:

    sample prompts → generate → reward + reference/teacher/critic (concurrently)
    → algorithm.prepare (advantages / weights) → learner epochs over mini-batches
    → sync weights into the rollout engines → log → checkpoint

Everything distributed hides behind RolloutGroup.generate, LearnerGroup.train_step and
sync_weights.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import torch

from rlpost import checkpoint
from rlpost.config import Config, ConfigError
from rlpost.runtime import fault
from rlpost.tracking import Timer, Tracker, setup_logging

log = logging.getLogger("rlpost")


def run_dir_for(cfg: Config) -> Path:
    name = (
        cfg.trainer.run_name
        or f"{cfg.algorithm.name.split(':')[-1].lower()}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    return Path(cfg.trainer.output_dir) / name


def connect_ray(cfg: Config) -> None:
    """An existing cluster when ray.address / RAY_ADDRESS is set, else a local one."""
    import os

    if ray.is_initialized():
        return
    addr = cfg.placement.ray_address or os.environ.get("RAY_ADDRESS", "")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}}
    if addr:
        ray.init(address=addr, runtime_env=env, log_to_driver=True)
    else:
        kw: dict[str, Any] = {"include_dashboard": False, "runtime_env": env}
        if cfg.placement.num_cpus:
            kw["num_cpus"] = cfg.placement.num_cpus
        ray.init(**kw)


def sync_weights(
    learners: Any,
    rollout: Any,
    version: int,
    bucket_mb: int,
    verify: bool = False,
    transport: str = "object_store",
) -> dict[str, float]:
    """Learner → every engine. ``object_store``: gathered params streamed as safetensors buckets
    (any device). ``nccl``: one broadcast group learner rank 0 → all vLLM workers (split GPUs).
    With ``verify``, compare per-tensor checksums of every tensor the engines keep in checkpoint
    layout (vLLM fuses q/k/v and repacks linear weights on CPU: those are covered by
    ``rollout/logprob_diff``)."""
    if transport == "nccl":
        meta = learners.nccl_meta()
        ray.get(rollout.nccl_receive(meta, version) + learners.nccl_broadcast())
    else:
        rollout.load_weights(learners.export_weights(bucket_mb), version)
    if not verify:
        return {}
    names = learners.param_names()
    mine = learners.checksums(names)
    theirs = rollout.checksums(names)
    compared = [n for n in names if all(n in t for t in theirs)]
    bad = [n for n in compared if any(t[n] != mine[n] for t in theirs)]
    return {"sync/checksummed": float(len(compared)), "sync/checksum_mismatch": float(len(bad))}


def choose_transport(cfg: Config) -> str:
    r = cfg.rollout
    if r.sync_transport != "auto":
        return r.sync_transport
    split_gpus = (
        cfg.placement.mode == "split" and r.gpus_per_engine > 0 and torch.cuda.is_available()
    )
    return "nccl" if split_gpus else "object_store"


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_dir = run_dir_for(cfg)
        self.groups: list[Any] = []
        self.placed = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from transformers import AutoTokenizer

        from algorithms.base import build_algorithm
        from rlpost.data import PromptSampler, load_prompts
        from rlpost.runtime import placement
        from rlpost.runtime.experience import ActorExperience
        from rlpost.runtime.frozen import FrozenGroup, check_same_tokenizer
        from rlpost.runtime.learner import LearnerGroup
        from rlpost.runtime.reward import RewardGroup
        from rlpost.runtime.rollout import RolloutGroup

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(self.run_dir / "train.log")
        torch.manual_seed(cfg.trainer.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or cfg.model.path)
        self.algo = build_algorithm(cfg)
        needs = self.needs = self.algo.needs()
        self.dataset = load_prompts(cfg, self.tokenizer, "train")  # data errors before any actor
        self.sampler = PromptSampler(self.dataset, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        use_ref = needs.reference and cfg.reference.enabled != "off"
        if cfg.reference.enabled == "on":
            use_ref = True
        if needs.teacher:
            check_same_tokenizer(cfg.model.tokenizer or cfg.model.path, cfg.teacher.path)

        t0 = time.time()
        connect_ray(cfg)
        fault.catch_sigterm()  # after ray.init, which installs a handler of its own
        checkpoint.check_shared_storage(self.run_dir)
        groups = {
            "reference": int(use_ref),
            "teacher": int(needs.teacher),
            "critic": cfg.critic.ranks if needs.critic else 0,
            "reward": int(needs.reward),
            "rollout": cfg.rollout.engines if needs.rollout else 0,
        }
        plan = placement.make_plan(cfg, groups)
        placement.check_fits(plan)
        self.placed = placement.place(plan, timeout_s=cfg.placement.timeout_s)
        log.info("placement:\n%s", placement.describe(plan, self.placed))
        reg = self.groups.append  # each group registers before it blocks: Ctrl-C kills it too
        self.rollout = (
            RolloutGroup(cfg, cfg.model.path, self.placed, reg) if needs.rollout else None
        )
        self.learners = LearnerGroup(cfg, "policy", self.placed, "learner", reg)
        self.critic = (
            LearnerGroup(cfg, "critic", self.placed, "critic", reg) if needs.critic else None
        )
        self.reference = (
            FrozenGroup(cfg, cfg.reference.path or cfg.model.path, "reference", self.placed)
            if use_ref
            else None
        )
        self.teacher = (
            FrozenGroup(cfg, cfg.teacher.path, "teacher", self.placed) if needs.teacher else None
        )
        self.reward = RewardGroup(cfg, self.placed) if needs.reward else None
        self.groups += [g for g in (self.reference, self.teacher, self.reward) if g]
        self.exp = ActorExperience(
            cfg,
            self.tokenizer,
            self.rollout,
            self.reward,
            self.reference,
            self.teacher,
            self.critic,
            self.learners,
        )
        self.transport = choose_transport(cfg)
        if self.transport == "nccl" and self.rollout is not None:
            from rlpost.runtime.learner import free_port

            host, port = self.learners.master_addr, free_port()  # rank 0 hosts the NCCL store
            world = 1 + cfg.rollout.engines * cfg.rollout.tensor_parallel
            ray.get(self.rollout.nccl_init(host, port) + self.learners.nccl_init(host, port, world))
        if self.rollout is not None:  # a restarted engine gets the current weights from here
            self.rollout.weight_source = lambda: self.learners.export_weights(
                cfg.rollout.sync_bucket_mb
            )
        self.startup_s = time.time() - t0
        log.info(
            "actors up in %.1fs (policy %.2fM params)",
            self.startup_s,
            self.learners.num_params / 1e6,
        )

        self.step = 0
        self.ckpt_root = self.run_dir / "checkpoints"
        self._start = copy.deepcopy({**self._state(), "rng": checkpoint.rng_state()})
        if cfg.trainer.resume:
            self._resume()

    def _ckpt_groups(self) -> dict[str, Any]:
        return {"policy": self.learners, **({"critic": self.critic} if self.critic else {})}

    def _resume(self) -> None:
        path = checkpoint.latest(self.ckpt_root)
        if path is None:
            log.info("no checkpoint in %s: starting fresh", self.ckpt_root)
            return
        self._load_state(checkpoint.load(path, self._ckpt_groups()))
        checkpoint.set_aside_metrics(self.run_dir, self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def rewind(self, why: fault.Rewind) -> None:
        """A learner/critic rank died and its group was rebuilt: back to the last checkpoint (or
        the start), engines re-synced; rows of the undone steps move to metrics.undone.jsonl."""
        log.warning("%s: back to the last checkpoint", why)
        if checkpoint.latest(self.ckpt_root) is not None:
            self._resume()
        else:
            for g in self._ckpt_groups().values():
                if g.group != why.group:  # trained past the start: back to fresh weights too
                    g.rebuild()
            checkpoint.set_rng_state(self._start["rng"])
            self._load_state(copy.deepcopy(self._start))
            checkpoint.set_aside_metrics(self.run_dir, self.step)

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "algorithm": self.algo.state_dict(),
            "policy_version": self.exp.policy_version,
            "reward": self.reward.state_dict() if self.reward is not None else {},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self.algo.load_state_dict(state["algorithm"])
        self.exp.policy_version = state["policy_version"]
        if self.reward is not None and state.get("reward"):
            self.reward.load_state_dict(state["reward"])
        if self.rollout is not None:
            sync_weights(
                self.learners,
                self.rollout,
                self.exp.policy_version,
                self.cfg.rollout.sync_bucket_mb,
                transport=self.transport,
            )

    def _save(self) -> None:
        checkpoint.save(self.ckpt_root, self.step, self._ckpt_groups(), self._state())

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg, algo, exp = self.cfg, self.algo, self.exp
        tracker = Tracker(cfg, self.run_dir, cfg.trainer.steps, self.step)
        tracker.log_startup = self.startup_s
        stop_at = cfg.trainer.steps
        if cfg.trainer.max_steps_this_run:
            stop_at = min(stop_at, self.step + cfg.trainer.max_steps_this_run)
        try:
            while self.step < stop_at:
                timer, t_step = Timer(), time.perf_counter()
                fault.inject(self.step + 1, self)  # test hook; a no-op unless asked
                exp.step, exp.gen_seconds = self.step, 0.0

                prompts = self.sampler.next(cfg.trainer.prompts_per_step)
                with timer("generate"):
                    batch = algo.collect(exp, prompts)
                with timer("score"):  # reward, reference, teacher, critic: concurrently
                    batch, metrics = exp.annotate(batch, self.needs)
                metrics.update(algo.prepare(batch))
                with timer("train"):
                    metrics.update(self._train(batch))
                metrics.update(algo.update(metrics))
                self.step += 1
                if self._sync_due(stop_at):
                    with timer("sync"):
                        metrics.update(self._sync())

                metrics.update(timer.times)
                metrics.update(fault.metrics(self.groups))
                metrics.update(self._batch_metrics(batch, exp, time.perf_counter() - t_step))
                if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0:
                    from rlpost.commands.evaluate import evaluate_in_loop

                    metrics.update(evaluate_in_loop(self))
                tracker.log(self.step, metrics)
                self._check_finite(metrics)
                if cfg.trainer.save_every and self.step % cfg.trainer.save_every == 0:
                    self._save()
            if self.step >= cfg.trainer.steps:
                self._save()
                if cfg.trainer.export_hf:
                    self.learners.export_hf(str(self.run_dir / "final"))
                    self.tokenizer.save_pretrained(str(self.run_dir / "final"))
        finally:
            tracker.close()
        return self.run_dir

    def _train(self, batch: Any) -> dict[str, float]:
        """Learner (and critic) epochs over mini-batches; colocated engines sleep meanwhile."""
        cfg = self.cfg
        batch.meta["step"] = self.step
        seed = cfg.trainer.seed * 7919 + self.step
        colocated = self.rollout is not None and cfg.placement.mode == "colocate"
        if colocated:
            self.rollout.sleep()
        metrics = self.learners.train_step(batch, cfg.learner.epochs, seed, self.needs.row_multiple)
        if self.critic is not None:
            crit = self.critic.train_step(batch, cfg.learner.epochs, seed)
            metrics.update(
                {
                    k if k.startswith(("loss/", "critic/")) else f"critic/{k}": v
                    for k, v in crit.items()
                }
            )
        if colocated:
            self.rollout.wake_up()
        return metrics

    def _sync_due(self, stop_at: int) -> bool:
        every = self.cfg.rollout.sync_every
        return self.rollout is not None and (self.step % every == 0 or self.step == stop_at)

    def _sync(self) -> dict[str, float]:
        self.exp.policy_version += 1
        r = self.cfg.rollout
        return sync_weights(
            self.learners, self.rollout, self.exp.policy_version, r.sync_bucket_mb, r.verify_sync
        )

    def _batch_metrics(self, batch: Any, exp: Any, step_s: float) -> dict[str, float]:
        mask = batch["response_mask"]
        resp_tokens = float(mask.sum())
        versions = batch.columns.get("policy_version", [exp.policy_version])
        return {
            "timing_s/step": step_s,
            "timing_s/generate_engine": exp.gen_seconds,
            "perf/tokens_per_s": resp_tokens / max(step_s, 1e-9),
            "perf/gen_tokens_per_s": resp_tokens / max(exp.gen_seconds, 1e-9),
            "response/length_mean": resp_tokens / max(len(batch), 1),
            "response/clip_frac": sum(f == "length" for f in batch.columns.get("finish_reason", []))
            / max(len(batch), 1),
            "policy_version": float(exp.policy_version),
            "rollout/sample_version_min": float(min(versions)),
            "batch/rows": float(len(batch)),
            **(
                {"env/turns_mean": sum(batch["turns"]) / max(len(batch), 1)}
                if "turns" in batch
                else {}
            ),
        }

    def _check_finite(self, metrics: dict[str, Any]) -> None:
        bad = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
        if bad:
            raise FloatingPointError(f"step {self.step}: non-finite metrics {bad}")

    def shutdown(self) -> None:
        handles = [a for g in self.groups for a in fault.handles(g)]
        for g in reversed(self.groups):
            try:
                g.shutdown()
            except Exception as e:  # noqa: BLE001 - keep tearing down the rest
                log.warning("shutdown of %s failed: %s", type(g).__name__, e)
        self.groups = []
        if fault.wait_dead(handles):
            log.warning("some actors still answered after being killed twice")
        if self.placed is not None:
            try:
                self.placed.remove()
            except Exception:  # noqa: BLE001
                pass


def train(cfg: Config) -> Path:
    """Run training; actors are torn down on success, error and Ctrl-C alike."""
    if cfg.algorithm.name == "":
        raise ConfigError("algorithm.name: required")
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        return fault.until_done(trainer.fit, trainer.rewind)
    finally:
        with fault.signals_deferred():  # a second Ctrl-C / SIGTERM must not cut teardown short
            trainer.shutdown()
