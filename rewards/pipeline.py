"""One scalar reward per sample from everything ``reward.*`` configures.

Sources, each with a weight: reward functions (run in worker processes), one reward-model
ensemble (``reward.models``), and remote reward servers (``reward.remote``). A row's score is
the weighted sum over the sources that scored it; a source's None means "does not apply" (as in
TRL). Bad output follows ``reward.on_error``: ``fail`` raises the :class:`RewardError`, ``drop``
gives the row None (the trainer removes it), ``zero`` counts the value as 0. A row that no source
scored is None, or 0 under ``zero``.

The runtime wraps this class in a Ray actor (``ray.remote(RewardPipeline)``), so it is built from
the Config alone.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rewards.base import (
    ERROR_KINDS,
    CallResult,
    RewardError,
    TrainerState,
    canonical_spec,
    check_items,
    function_name,
    is_builtin,
    to_items,
    to_numbers,
)
from rewards.workers import WorkerPool

if TYPE_CHECKING:
    from rlpost.config import Config

log = logging.getLogger("rlpost.rewards")


@dataclass
class Source:
    name: str
    kind: str  # "function" | "ensemble" | "remote"
    weight: float
    spec: str = ""
    style: str = "trl"
    obj: Any = None


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def source_weights(
    n_functions: int, n_models: int, n_remote: int, weights: list[float]
) -> list[float]:
    """One weight per source (functions, then the ensemble, then each remote URL)."""
    n = n_functions + (1 if n_models else 0) + n_remote
    if not weights:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(
            f"reward.weights: {len(weights)} weights for {n} reward sources "
            f"({n_functions} functions, {'one ensemble, ' if n_models else ''}{n_remote} remote); "
            "an ensemble of several models takes one weight"
        )
    return [float(w) for w in weights]


class RewardPipeline:
    """Scores batches of (prompt, completion) rows; see the module docstring for the rules."""

    def __init__(self, cfg: Config) -> None:
        r = cfg.reward
        self.on_error = r.on_error
        self.answer_key = cfg.data.answer_key or "answer"
        self.max_steps = cfg.trainer.steps
        specs = [s.strip() for s in r.functions if s.strip()]
        if not (specs or r.models or r.remote) and cfg.data.train.strip().startswith("task:"):
            specs = [cfg.data.train.strip()]  # the task's own verifier
        if not (specs or r.models or r.remote):
            raise ValueError(
                "reward: nothing to score with; set reward.functions, reward.models or "
                "reward.remote (or data.train=task:NAME to use the task's verifier)"
            )
        weights = source_weights(len(specs), len(r.models), len(r.remote), list(r.weights))
        names = _unique(
            [function_name(s) for s in specs]
            + (["rm"] if r.models else [])
            + [f"remote{i}" for i in range(len(r.remote))]
        )
        self.sources: list[Source] = []
        self.pool: WorkerPool | None = WorkerPool(r.workers, r.timeout_s) if specs else None
        self._executor = ThreadPoolExecutor(
            max(1, r.workers + len(r.remote)), thread_name_prefix="reward"
        )
        try:
            for spec, name, w in zip(specs, names, weights):
                style = "rlpost" if is_builtin(spec) else r.style
                src = Source(name, "function", w, canonical_spec(spec), style)
                assert self.pool is not None
                self.pool.load(src.spec, src.style, self.answer_key, name)
                self.sources.append(src)
            k = len(specs)
            if r.models:
                self.sources.append(
                    Source(names[k], "ensemble", weights[k], obj=self._ensemble(cfg))
                )
                k += 1
            from rewards.remote import RemoteReward  # httpx: remote rewards only

            for url, name, w in zip(r.remote, names[k:], weights[k:]):
                rr = RemoteReward(
                    url,
                    batch_size=r.remote_batch_size,
                    timeout_s=r.timeout_s,
                    retries=r.remote_retries,
                )
                self.sources.append(Source(name, "remote", w, spec=url, obj=rr))
        except BaseException:
            self.close()
            raise
        self.last_errors: list[RewardError] = []

    @staticmethod
    def _ensemble(cfg: Config) -> Any:
        import torch  # rewards stays light to import: reward models only

        from rewards.ensemble import Ensemble

        r = cfg.reward
        return Ensemble.from_paths(
            r.models,
            device="cuda" if torch.cuda.is_available() else "cpu",
            batch_size=r.rm_batch_size,
            mode=r.ensemble.mode,
            uwo_lambda=r.ensemble.uwo_lambda,
            normalize=r.ensemble.normalize,
            calibration=r.ensemble.calibration or None,
        )

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    # ------------------------------------------------------------------ scoring

    def _call_remote(
        self, src: Source, prompts: list, completions: list, columns: dict, step: int
    ) -> CallResult | RewardError:
        try:
            out = src.obj(prompts, completions, step=step, **columns)
        except Exception as e:  # noqa: BLE001 - becomes a RewardError naming the URL
            return RewardError(src.name, None, "exception", str(e), len(completions))
        extras: dict[str, list[float]] = {}
        if isinstance(out, dict):  # OpenRLHF's answer: rewards train, the rest is logged
            if out.get("scores") is not None:
                extras["scores"] = to_numbers(out["scores"])
            for k, v in (out.get("extra_logs") or {}).items():
                extras[str(k)] = to_numbers(v)
        return CallResult(to_items(out, len(completions)), extras)

    def _columns(self, columns: dict[str, list] | None, n: int) -> dict[str, list]:
        cols = dict(columns or {})
        for k, v in cols.items():
            if not isinstance(v, (list, tuple)) or len(v) != n:
                got = len(v) if isinstance(v, (list, tuple)) else type(v).__name__
                raise ValueError(f"reward columns: '{k}' has {got} values for {n} rows")
        if self.answer_key in cols and "answer" not in cols:
            cols["answer"] = cols[self.answer_key]
        return cols

    def _state(self, cols: dict[str, list], step: int) -> TrainerState:
        """TRL's ``trainer_state``: the epoch is how far the prompt sampler has gone."""
        epochs = [float(e) for e in cols.get("_epoch", []) if isinstance(e, (int, float))]
        return TrainerState(step, self.max_steps, max(epochs) if epochs else 0.0)

    def score(
        self,
        prompts: list,
        completions: list[str],
        columns: dict[str, list] | None = None,
        step: int = 0,
    ) -> tuple[list[float | None], dict[str, float]]:
        """One score per row (None = dropped) and ``reward/...`` metrics."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"reward: {len(prompts)} prompts but {n} completions")
        cols = self._columns(columns, n)
        if n == 0:
            return [], {}
        state = self._state(cols, step)
        t0 = time.perf_counter()
        pending: list[tuple[Source, Future]] = []
        for src in self.sources:
            if src.kind == "function":
                assert self.pool is not None
                fut = self._executor.submit(
                    self.pool.call, src.name, src.spec, src.style, self.answer_key,
                    list(prompts), list(completions), cols, state,
                )  # fmt: skip
                pending.append((src, fut))
            elif src.kind == "remote":
                fut = self._executor.submit(
                    self._call_remote, src, prompts, completions, cols, step
                )
                pending.append((src, fut))
        metrics: dict[str, float] = {}
        results: dict[str, list[float | None | RewardError]] = {}
        extras: dict[str, dict[str, list[float]]] = {}
        tables: dict[str, list] = {}
        for src in self.sources:
            if src.kind == "ensemble":
                t1 = time.perf_counter()
                vals, m = src.obj.score(prompts, completions)
                results[src.name] = [float(v) for v in vals]
                metrics.update({f"reward/{src.name}/{k}": v for k, v in m.items()})
                metrics[f"reward/{src.name}/time_s"] = time.perf_counter() - t1
        for src, fut in pending:
            res = fut.result()
            results[src.name] = check_items(src.name, res, n)
            if isinstance(res, CallResult):
                extras[src.name] = res.extras
                for col, vals in res.columns.items():
                    tables[f"samples/{col}"] = vals
        scores, m = self._combine(results, n)
        metrics.update(m)
        for name, ex in extras.items():
            for k, vs in ex.items():
                if vs:
                    metrics[f"reward/{name}/{k}"] = sum(vs) / len(vs)
        metrics["reward/time_s"] = time.perf_counter() - t0
        if self.pool is not None:
            metrics["fault/restarts_reward_worker"] = float(self.pool.deaths)
        metrics.update(tables)  # lists: the tracker writes them to samples.jsonl, not metrics
        return scores, metrics

    def _combine(
        self, results: dict[str, list[float | None | RewardError]], n: int
    ) -> tuple[list[float | None], dict[str, float]]:
        total = [0.0] * n
        scored = [False] * n
        dropped = [False] * n
        errors: list[RewardError] = []
        metrics: dict[str, float] = {}
        nones = 0
        for src in self.sources:
            vals: list[float] = []
            for i, v in enumerate(results[src.name]):
                if isinstance(v, RewardError):
                    if not errors or errors[-1] is not v:
                        errors.append(v)
                    if self.on_error == "drop":
                        dropped[i] = True
                        continue
                    v = 0.0
                if v is None:
                    nones += 1
                    continue
                vals.append(v)
                total[i] += src.weight * v
                scored[i] = True
            if vals and src.kind != "ensemble":
                metrics[f"reward/{src.name}/mean"] = sum(vals) / len(vals)
        # Count errors per affected row (a failed call counts once per row it covered).
        counts = {k: 0 for k in ERROR_KINDS}
        for e in errors:
            counts[e.kind] = counts.get(e.kind, 0) + (1 if e.row is not None else (e.rows or n))
        self.last_errors = errors
        if errors and self.on_error == "fail":
            first = errors[0]
            more = sum(counts.values()) - (1 if first.row is not None else (first.rows or n))
            detail = first.detail + (f" (+{more} more bad rows in this batch)" if more > 0 else "")
            raise RewardError(first.function, first.row, first.kind, detail, first.rows)
        if errors:
            log.warning(
                "%s (reward.on_error=%s; %d bad rows)",
                errors[0],
                self.on_error,
                sum(counts.values()),
            )
        out: list[float | None] = []
        for i in range(n):
            if dropped[i]:
                out.append(None)
            elif scored[i]:
                out.append(total[i])
            else:
                out.append(0.0 if self.on_error == "zero" else None)
        kept = [v for v in out if v is not None]
        metrics["reward/mean"] = sum(kept) / len(kept) if kept else 0.0
        metrics["reward/std"] = (
            math.sqrt(sum((v - metrics["reward/mean"]) ** 2 for v in kept) / len(kept))
            if kept
            else 0.0
        )
        metrics["reward/errors"] = float(sum(counts.values()))
        for k, c in counts.items():
            metrics[f"reward/errors/{k}"] = float(c)
        metrics["reward/dropped"] = float(sum(v is None for v in out))
        metrics["reward/none"] = float(nones)
        return out, metrics

    # ------------------------------------------------------------------ state & teardown

    def state_dict(self) -> dict[str, Any]:
        """Running normaliser statistics, for exact resume."""
        return {s.name: s.obj.state_dict() for s in self.sources if s.kind == "ensemble"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s in self.sources:
            if s.kind == "ensemble" and s.name in state:
                s.obj.load_state_dict(state[s.name])

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.close()
            self.pool = None
        for s in getattr(self, "sources", []):
            if s.kind == "remote":
                s.obj.close()
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RewardPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
