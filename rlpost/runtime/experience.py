"""The Experience an algorithm's ``collect`` sees, backed by the Ray actor groups."""

from __future__ import annotations

from typing import Any

import torch

from envs.multiturn import make_envs, rollout_multiturn
from rlpost.batch import Batch, build_sequences
from rlpost.groups import group_ids_for


class RewardOutputError(RuntimeError):
    pass


class ActorExperience:
    def __init__(
        self,
        cfg: Any,
        tokenizer: Any,
        rollout: Any,
        reward: Any,
        reference: Any = None,
        teacher: Any = None,
        critic: Any = None,
        learners: Any = None,
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rollout = rollout
        self.reward = reward
        self.reference = reference
        self.teacher = teacher
        self.critic = critic
        self.learners = learners
        self.policy_version = 0
        self.ahead = cfg.trainer.off_policy_steps  # batches may be made this many syncs early
        lrn, rows = cfg.learner, cfg.trainer.prompts_per_step * cfg.rollout.n
        # one optimizer step per batch: the learner's own forward, before that step, is π_old
        self.one_update = lrn.epochs == 1 and (
            not lrn.mini_batch_size or lrn.mini_batch_size >= rows
        )
        self.step = 0
        self.gen_seconds = 0.0
        self._seed_step, self._seed_offset = -1, 0  # see _seeds
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -------------------------------------------------------------------- generation
    def _seeds(self, count: int, n: int = 1) -> list[int]:
        """One seed per request, spaced by n (vLLM seeds sample j of a request with seed + j), and
        fresh for every call within a step (tree search calls generate_text once per round)."""
        if self._seed_step != self.step:
            self._seed_step, self._seed_offset = self.step, 0
        base = self.cfg.rollout.seed * 1_000_003 + self.step * 10_007 + self._seed_offset
        self._seed_offset += count * n
        return [base + i * n for i in range(count)]

    def generate(self, prompts: list[dict], n: int, **sampling: Any) -> Batch:
        if self.cfg.data.env:
            return self.generate_episodes(prompts, n, **sampling)
        ids = [p["prompt_ids"] for p in prompts]
        out, secs = self.rollout.generate(ids, n, seeds=self._seeds(len(ids), n), **sampling)
        self.gen_seconds += secs
        p_ids, r_ids, r_lps, cols = [], [], [], {}
        extra = [k for k in prompts[0] if k not in ("prompt_ids",)] if prompts else []
        cols = {k: [] for k in extra}
        completion, group, version, finish = [], [], [], []
        ids = group_ids_for(self.step, len(prompts))
        for gi, (row, samples) in enumerate(zip(prompts, out)):
            for s in samples:
                p_ids.append(row["prompt_ids"])
                r_ids.append(s["token_ids"])
                r_lps.append(s["logprobs"])
                completion.append(s["text"])
                group.append(ids[gi])
                version.append(s["version"])
                finish.append(s["finish_reason"])
                for k in extra:
                    cols[k].append(row[k])
        batch = build_sequences(p_ids, r_ids, r_lps, pad_id=self.pad_id)
        for k, v in cols.items():
            batch.columns[k] = v
        batch.columns.update(
            completion=completion, group_id=group, policy_version=version, finish_reason=finish
        )
        return batch

    def generate_episodes(self, prompts: list[dict], n: int, **sampling: Any) -> Batch:
        """Multi-turn: vLLM drives every episode turn by turn; environment tokens are masked out
        of the loss; the environment's rewards are the scores."""

        rows = [p for p in prompts for _ in range(n)]
        envs = make_envs(self.cfg.data.env, len(rows))
        seeds = iter(range(10**9))

        def generate(prompt_ids: list[list[int]], max_tokens: int, stop: list[str]) -> list[dict]:
            base = self._seeds(1)[0] + 1000 * next(seeds)
            out, secs = self.rollout.generate(
                prompt_ids,
                1,
                max_tokens=max_tokens,
                seeds=[base + i for i in range(len(prompt_ids))],
                stop=stop,
                include_stop=True,
                **sampling,
            )
            self.gen_seconds += secs
            return [samples[0] for samples in out]

        d = self.cfg.data
        batch = rollout_multiturn(
            generate,
            self.tokenizer,
            envs,
            rows,
            d.max_turns,
            self.cfg.rollout.max_new_tokens,
            chat_template=d.chat_template,
            system_prompt=d.system_prompt,
            max_len=self.cfg.rollout.max_model_len,
        )
        batch.columns["group_id"] = group_ids_for(self.step, len(prompts), n)
        batch.columns["policy_version"] = [self.policy_version] * len(rows)
        return batch

    def generate_text(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_tokens: int,
        stop: list[str] | None = None,
        **sampling: Any,
    ) -> list[list[dict]]:
        out, secs = self.rollout.generate(
            prompt_ids,
            n,
            max_tokens=max_tokens,
            seeds=self._seeds(len(prompt_ids), n),
            stop=stop or [],
            include_stop=True,
            **sampling,
        )
        self.gen_seconds += secs
        return out

    # -------------------------------------------------------------------- scoring
    def score_async(self, batch: Batch) -> Any:
        columns = {
            k: v
            for k, v in batch.columns.items()
            if k not in ("prompt", "completion", "prompt_ids")
        }
        return self.reward.score_async(
            list(batch["prompt"]), list(batch["completion"]), columns, self.step
        )

    def finish_scores(self, batch: Batch, pending: Any) -> tuple[Batch, dict]:
        scores, metrics = pending.result()  # a reward actor that died is replaced and asked again
        if len(scores) != len(batch):
            raise RewardOutputError(
                f"reward group returned {len(scores)} scores for {len(batch)} rows"
            )
        keep = [i for i, s in enumerate(scores) if s is not None]
        batch.tensors["scores"] = torch.tensor(
            [float(s) if s is not None else 0.0 for s in scores], dtype=torch.float32
        )
        if len(keep) < len(batch):
            metrics["reward/dropped_rows"] = len(batch) - len(keep)
            batch = batch.select(keep)
        return batch, metrics

    def score(self, batch: Batch) -> dict[str, float]:
        new, metrics = self.finish_scores(batch, self.score_async(batch))
        batch.tensors, batch.columns = new.tensors, new.columns
        return metrics

    def ref_logp(self, batch: Batch) -> torch.Tensor:
        return self.reference.logprobs_async(batch).result()

    def teacher_logp(self, batch: Batch) -> torch.Tensor:
        return self.teacher.logprobs_async(batch).result()

    def policy_logp(self, batch: Batch) -> torch.Tensor:
        return self.learners.forward(batch)

    def annotate(self, batch: Batch, needs: Any) -> tuple[Batch, dict]:
        """Reward, reference, teacher and critic work on the same batch concurrently."""
        futures: dict[str, Any] = {}
        if "scores" not in batch:
            futures["scores"] = self.score_async(batch)
        if needs.reference and self.reference is not None and "ref_logp" not in batch:
            futures["ref_logp"] = self.reference.logprobs_async(batch)
        if needs.teacher and self.teacher is not None and "teacher_logp" not in batch:
            futures["teacher_logp"] = self.teacher.logprobs_async(batch)
        metrics: dict[str, float] = {}
        if needs.critic and self.critic is not None and not self.ahead:  # else in catch_up
            batch.tensors["values"] = self.critic.forward(batch)
        for key, fut in futures.items():
            if key != "scores":
                batch.tensors[key] = fut.result()
        if "scores" in futures:
            batch, metrics = self.finish_scores(batch, futures["scores"])
        return batch, metrics

    def catch_up(self, batch: Batch, needs: Any) -> dict[str, float]:
        """Just before training, what only the current learner and critic can give a batch made
        ahead: values, and π_old = the learner's log-probs, the engine's kept as the behaviour
        policy's (``behav_logp``) for the truncated importance weight. With one optimizer step
        per batch the learner's forward in the loss, which runs before that step, is π_old
        itself, so no extra pass is made. Staleness is logged either way: weight versions
        between the engine that sampled a row and the learner now."""
        lag = [self.policy_version - v for v in batch.columns.get("policy_version", [])] or [0]
        metrics = {
            "rollout/staleness_mean": sum(lag) / len(lag),
            "rollout/staleness_max": float(max(lag)),
        }
        if not self.ahead:
            return metrics
        if needs.critic and self.critic is not None:
            batch.tensors["values"] = self.critic.forward(batch)
        batch.tensors["behav_logp"] = batch["old_logp"]
        if self.one_update:  # no extra pass: the loss takes π_old from its own forward
            batch.meta["old_logp_from_forward"] = True
        else:
            batch.tensors["old_logp"] = self.learners.forward(batch)
        return metrics
