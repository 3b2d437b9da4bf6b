"""The training loop, top to bottom:

    sample prompts → generate → reward + reference/teacher/critic (concurrently)
    → algorithm.prepare (advantages / weights) → learner epochs over mini-batches
    → sync weights into the rollout engines → log → checkpoint

With trainer.off_policy_steps = k > 0 the first two lines run up to k steps ahead, on the
pipeline's thread (rlpost/runtime/pipeline.py), while the learner trains. Everything distributed
hides behind RolloutGroup.generate, LearnerGroup.train_step and WeightSync.sync
(rlpost/runtime/sync.py); actors start in rlpost/runtime/cluster.py.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from algorithms.base import build_algorithm
from rlpost import checkpoint
from rlpost.config import Config, ConfigError
from rlpost.data import PromptSampler, load_prompts
from rlpost.evaluation import evaluate_in_loop
from rlpost.models.hf import load_tokenizer
from rlpost.runtime import fault
from rlpost.runtime.cluster import Actors, connect_ray, start_actors
from rlpost.runtime.experience import ActorExperience
from rlpost.runtime.frozen import check_same_tokenizer
from rlpost.runtime.pipeline import Pipeline
from rlpost.tracking import Timer, Tracker, batch_metrics, check_finite, prefixed, setup_logging

log = logging.getLogger("rlpost")


def run_dir_for(cfg: Config) -> Path:
    name = (
        cfg.trainer.run_name
        or f"{cfg.algorithm.name.split(':')[-1].lower()}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    return Path(cfg.trainer.output_dir) / name


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_dir = run_dir_for(cfg)
        self.actors = Actors(learners=None)
        self._drawing, self._drawn = threading.Lock(), {}  # step → sampler state before it

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(self.run_dir / "train.log")
        torch.manual_seed(cfg.trainer.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
        self.algo = build_algorithm(cfg)
        needs = self.needs = self.algo.needs()
        self.dataset = load_prompts(cfg, self.tokenizer, "train")  # data errors before any actor
        self.sampler = PromptSampler(self.dataset, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        if needs.teacher:
            check_same_tokenizer(cfg.model.tokenizer or cfg.model.path, cfg.teacher.path)

        t0 = time.time()
        connect_ray(cfg)
        fault.catch_sigterm()  # after ray.init, which installs a handler of its own
        checkpoint.check_shared_storage(self.run_dir)
        objective = functools.partial(build_algorithm, cfg)  # each learner rank builds its loss
        act = self.actors = start_actors(cfg, needs, objective, self.actors)
        self.rollout, self.learners, self.critic = act.rollout, act.learners, act.critic
        self.reference, self.teacher, self.reward = act.reference, act.teacher, act.reward
        groups = (act.rollout, act.reward, act.reference, act.teacher, act.critic, act.learners)
        self.exp = ActorExperience(cfg, self.tokenizer, *groups)
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
        if path is None:  # `rlpost train --resume` refused this before any actor started
            raise ConfigError(f"trainer.resume: no complete checkpoint in {self.ckpt_root}")
        self._load_state(checkpoint.load(path, self._ckpt_groups()))
        checkpoint.set_aside_metrics(self.run_dir, self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def rewind(self, why: fault.Rewind) -> None:
        """A learner/critic rank died and its group was rebuilt: back to the last checkpoint (or
        the start), engines re-synced; rows of the undone steps move to metrics.undone.jsonl."""
        log.warning("%s: back to the last checkpoint", why)
        if checkpoint.latest(self.ckpt_root) is not None:
            return self._resume()
        for g in self._ckpt_groups().values():
            if g.group != why.group:  # trained past the start: back to fresh weights too
                g.rebuild()
        checkpoint.set_rng_state(self._start["rng"])
        self._load_state(copy.deepcopy(self._start))
        checkpoint.set_aside_metrics(self.run_dir, self.step)

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self._sampler_state(),
            "algorithm": self.algo.state_dict(),
            "policy_version": self.exp.policy_version,
            "reward": self.reward.state_dict() if self.reward is not None else {},
        }

    def _sampler_state(self) -> dict[str, Any]:
        """As it was before the next step's prompts were drawn, even if they were drawn ahead."""
        with self._drawing:
            self._drawn = {s: v for s, v in self._drawn.items() if s >= self.step}
            return copy.deepcopy(self._drawn.get(self.step, self.sampler.state_dict()))

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self._drawn = {}
        self.sampler.load_state_dict(state["sampler"])
        self.algo.load_state_dict(state["algorithm"])
        self.exp.policy_version = state["policy_version"]
        if self.reward is not None and state.get("reward"):
            self.reward.load_state_dict(state["reward"])
        if self.actors.weight_sync is not None:
            self.actors.weight_sync.sync(self.exp.policy_version, rewind=True)

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
        # off_policy_steps = k > 0: step t+1 … t+k are generated while the learner trains on t
        self.pipe = Pipeline(self._experience, cfg.trainer.off_policy_steps, stop_at)
        try:
            while self.step < stop_at:
                timer, t_step = Timer(), time.perf_counter()
                fault.inject(self.step + 1, self)  # test hook; a no-op unless asked
                with timer("wait_rollout"):  # all of generate + score when synchronous
                    batch, metrics = self.pipe.get(self.step)
                with timer("prepare"):
                    metrics.update(exp.catch_up(batch, self.needs))  # values, π_old if stale
                    metrics.update(algo.prepare(batch))
                with timer("train"):
                    metrics.update(self._train(batch))
                metrics.update(algo.update(metrics))
                self.step += 1
                if self._sync_due(stop_at):
                    with timer("sync"):  # between two engine calls, never inside one
                        metrics.update(self.pipe.between_calls(self._sync))

                metrics.update(timer.times)
                metrics.update(fault.metrics(self.actors.groups))
                metrics.update(batch_metrics(batch, exp, time.perf_counter() - t_step))
                if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0:
                    metrics.update(self.pipe.between_calls(evaluate_in_loop, self))
                tracker.log(self.step, metrics)
                check_finite(self.step, metrics)
                if cfg.trainer.save_every and self.step % cfg.trainer.save_every == 0:
                    self._save()
            if self.step >= cfg.trainer.steps:
                self._save()
                if cfg.trainer.export_hf:
                    self.learners.export_hf(str(self.run_dir / "final"))
                    self.tokenizer.save_pretrained(str(self.run_dir / "final"))
        finally:
            self.pipe.close()
            tracker.close()
        return self.run_dir

    def _experience(self, step: int) -> tuple[Any, dict[str, float]]:
        """Step's batch: prompts → samples → reward, reference, teacher (+ critic when
        synchronous), on the pipeline's thread when made ahead."""
        cfg, exp, timer = self.cfg, self.exp, Timer()
        with self._drawing:  # a checkpoint saves the sampler as it was before unmade steps
            self._drawn[step] = self.sampler.state_dict()
            prompts = self.sampler.next(cfg.trainer.prompts_per_step)
        exp.step, exp.gen_seconds = step, 0.0
        with timer("generate"):
            batch = self.algo.collect(exp, prompts)
        with timer("score"):  # reward, reference, teacher, critic: concurrently
            batch, metrics = exp.annotate(batch, self.needs)
        batch.meta["gen_seconds"] = exp.gen_seconds
        return batch, {**metrics, **timer.times}

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
            metrics.update(
                prefixed(self.critic.train_step(batch, cfg.learner.epochs, seed), "critic/")
            )
        if colocated:
            self.rollout.wake_up()
        return metrics

    def _sync_due(self, stop_at: int) -> bool:
        every = self.cfg.rollout.sync_every
        return self.rollout is not None and (self.step % every == 0 or self.step == stop_at)

    def _sync(self) -> dict[str, float]:
        self.exp.policy_version += 1
        return self.actors.weight_sync.sync(self.exp.policy_version, self.cfg.rollout.verify_sync)

    def shutdown(self) -> None:
        self.actors.shutdown()


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
