"""Reward-model ensembles against over-optimisation (Coste et al. 2023).

Members' raw scores live on different scales, so each member is first normalised (running
mean/std, or fixed statistics from a calibration set), then the [M, N] matrix is combined:
``mean``; ``wco`` (worst case: min over members); ``uwo`` (mean − λ · population variance over
members, which penalises samples the members disagree on).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

Mode = Literal["mean", "wco", "uwo"]
EPS = 1e-6


def combine(scores: torch.Tensor, mode: str, uwo_lambda: float = 1.0) -> torch.Tensor:
    """[M, N] member scores → [N]."""
    if scores.dim() != 2:
        raise ValueError(f"combine: scores must be [M, N], got shape {tuple(scores.shape)}")
    if mode == "mean":
        return scores.mean(0)
    if mode == "wco":
        return scores.min(0).values
    if mode == "uwo":
        return scores.mean(0) - uwo_lambda * scores.var(0, unbiased=False)
    raise ValueError(f"reward.ensemble.mode: {mode!r} is not one of 'mean', 'wco', 'uwo'")


def disagreement(scores: torch.Tensor) -> float:
    """Mean over samples of the population std across members."""
    return float(scores.std(0, unbiased=False).mean()) if scores.numel() else 0.0


class Normalizer(Protocol):
    def __call__(self, scores: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Identity:
    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RunningNormalizer:
    """Per-member running mean / population variance over every score seen so far.

    A batch first updates the statistics (Chan's parallel merge, exact in float64), then is
    standardised with them, so the very first batch is standardised by its own statistics.
    """

    def __init__(self, members: int) -> None:
        self.count = 0
        self.mean = torch.zeros(members, dtype=torch.float64)
        self.m2 = torch.zeros(members, dtype=torch.float64)

    def update(self, scores: torch.Tensor) -> None:
        x = scores.detach().to(torch.float64)
        n = x.shape[1]
        if n == 0:
            return
        b_mean = x.mean(1)
        b_m2 = ((x - b_mean[:, None]) ** 2).sum(1)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + b_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        var = self.m2 / self.count if self.count else torch.ones_like(self.m2)
        return (var + EPS).sqrt()

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        self.update(scores)
        return ((scores.to(torch.float64) - self.mean[:, None]) / self.std[:, None]).to(
            scores.dtype
        )

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = torch.tensor(state["mean"], dtype=torch.float64)
        self.m2 = torch.tensor(state["m2"], dtype=torch.float64)


class FixedNormalizer:
    """Fixed per-member mean / std, e.g. measured once on a calibration set."""

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64).clamp_min(EPS)

    @classmethod
    def from_scores(cls, scores: torch.Tensor) -> FixedNormalizer:
        """Statistics of [M, K] calibration scores (population std)."""
        x = scores.to(torch.float64)
        return cls(x.mean(1), x.std(1, unbiased=False))

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        z = (scores.to(torch.float64) - self.mean[:, None]) / self.std[:, None]
        return z.to(scores.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = torch.tensor(state["mean"], dtype=torch.float64)
        self.std = torch.tensor(state["std"], dtype=torch.float64)


def load_calibration(path: str | Path) -> tuple[list[Any], list[str]]:
    """Calibration pairs from a .jsonl / .json file: rows with ``prompt`` and ``completion``.

    ``response`` is accepted for ``completion``; a row without either is scored with an empty
    completion (a prompts-only set still fixes each member's scale).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"reward.ensemble.calibration: file not found: {p}")
    text = p.read_text()
    if p.suffix == ".json":
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    prompts, completions = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"reward.ensemble.calibration: {p} row {i} has no 'prompt' field")
        prompts.append(row["prompt"])
        completions.append(str(row.get("completion", row.get("response", ""))))
    if len(prompts) < 2:
        raise ValueError(
            f"reward.ensemble.calibration: {p} needs at least 2 rows, has {len(prompts)}"
        )
    return prompts, completions


class Ensemble:
    """Several reward models in one process: score, normalise per member, combine, report."""

    def __init__(
        self,
        models: Sequence[Any],
        mode: str = "mean",
        uwo_lambda: float = 1.0,
        normalize: str = "running",
        calibration: tuple[list, list[str]] | str | None = None,
    ) -> None:
        if not models:
            raise ValueError("reward.models: an ensemble needs at least one reward model")
        combine(torch.zeros(1, 1), mode)  # validates the mode now
        self.models, self.mode, self.uwo_lambda = list(models), mode, uwo_lambda
        self._lock = threading.Lock()
        m = len(self.models)
        self.normalizer: Normalizer
        if normalize == "none":
            self.normalizer = Identity()
        elif normalize == "running":
            self.normalizer = RunningNormalizer(m)
        elif normalize == "calibration":
            if not calibration:
                raise ValueError(
                    "reward.ensemble.calibration: normalize=calibration needs a calibration file"
                )
            prompts, completions = (
                load_calibration(calibration)
                if isinstance(calibration, (str, Path))
                else calibration
            )
            self.normalizer = FixedNormalizer.from_scores(self.raw_scores(prompts, completions))
        else:
            raise ValueError(
                f"reward.ensemble.normalize: {normalize!r} is not one of 'none', 'running', 'calibration'"
            )

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str],
        device: str = "cpu",
        batch_size: int = 16,
        **kw: Any,
    ) -> Ensemble:
        from rewards.model import RewardModel  # torch + transformers: reward models only

        return cls([RewardModel(p, device=device, batch_size=batch_size) for p in paths], **kw)

    def raw_scores(self, prompts: list, completions: list[str]) -> torch.Tensor:
        """[M, N] raw member scores."""
        return torch.stack([m.score(prompts, completions) for m in self.models])

    def score(self, prompts: list, completions: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """Combined [N] scores and metrics: per-member raw means, disagreement, combined mean."""
        raw = self.raw_scores(prompts, completions)
        with self._lock:
            z = self.normalizer(raw)
        out = combine(z, self.mode, self.uwo_lambda)
        metrics = {f"member{i}/mean": float(raw[i].mean()) for i in range(raw.shape[0])}
        metrics["disagreement"] = disagreement(z)
        metrics["mean"] = float(out.mean())
        return out, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
