"""What a compare can conclude: 95 % intervals across seeds, and the verdict on a paper's claim.

A compare file states the claims it tests:

    claims:
      - {name: "GRPO-D beats GRPO", metric: accuracy, better: grpo_d, than: grpo, margin: 0.03}

For each claim the final evaluation's ``metric`` of arm ``better`` minus that of arm ``than``
(sign flipped when lower is better, ``higher: false``) is taken seed by seed when both arms ran
the same seeds (paired: same base, same eval prompts, same sampling seeds), else between the arm
means (Welch). Its 95 % t-interval decides:

- **reproduced**: the whole interval lies above 0;
- **not reproduced**: the whole interval lies below ``margin``, the smallest difference that
  would matter, so any effect is smaller than that (or reversed);
- **inconclusive**: the interval holds both 0 and ``margin``: more seeds or eval problems needed;
  also whenever an arm has fewer than ``MIN_SEEDS`` finished seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlpost.config import ConfigError

# two-sided 95 % quantiles of Student's t for 1 … 30 degrees of freedom
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
DEFAULT_MARGIN = 0.02
# Fewer seeds give no verdict: two seeds whose differences happen to agree (accuracy moves in
# steps of 1 / prompts) give a zero-width interval, "reproduced" from noise.
MIN_SEEDS = 3


def t975(df: float) -> float:
    """Student's t 97.5 % quantile (the table, then 1.96 + 2.37/df: within 0.002 above 30)."""
    if df < 1:
        return math.inf
    if df <= 30:
        lo = _T975[int(df) - 1]
        hi = _T975[min(int(df), 29)]
        return lo + (hi - lo) * (df - int(df))  # Welch's df is fractional
    return 1.96 + 2.37 / df


def interval(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, 95 % t-interval half-width (inf for one value) and count of the finite values."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    if len(vals) == 1:
        return float(vals[0]), math.inf, 1
    sd = statistics.stdev(vals)
    return statistics.fmean(vals), t975(len(vals) - 1) * sd / math.sqrt(len(vals)), len(vals)


@dataclass(frozen=True)
class Claim:
    name: str
    metric: str
    better: str
    than: str
    higher: bool = True
    margin: float = DEFAULT_MARGIN


def parse_claims(
    raw: Any, where: str, labels: Sequence[str], metrics: Sequence[str]
) -> list[Claim]:
    """Check a compare file's ``claims`` list: known arms and metric, a margin > 0."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: claims: a list of {{name, metric, better, than}} mappings")
    known = {"name", "metric", "better", "than", "higher", "margin"}
    out = []
    for i, c in enumerate(raw):
        key = f"{where}: claims[{i}]"
        if not isinstance(c, dict) or not {"metric", "better", "than"} <= set(c):
            raise ConfigError(f"{key}: needs metric, better and than (got {c!r})")
        if set(c) - known:
            raise ConfigError(
                f"{key}: unknown key(s) {sorted(set(c) - known)} (known: {sorted(known)})"
            )
        for arm in ("better", "than"):
            if c[arm] not in labels:
                raise ConfigError(
                    f"{key}.{arm}: {c[arm]!r} is not a run label ({', '.join(labels)})"
                )
        if c["metric"] not in metrics:
            raise ConfigError(f"{key}.metric: {c['metric']!r} is not one of {', '.join(metrics)}")
        margin = float(c.get("margin", DEFAULT_MARGIN))
        if margin <= 0:
            raise ConfigError(f"{key}.margin: must be > 0 (the smallest effect that matters)")
        name = str(c.get("name") or f"{c['better']} > {c['than']} on {c['metric']}")
        out.append(
            Claim(name, c["metric"], c["better"], c["than"], bool(c.get("higher", True)), margin)
        )
    return out


def difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, str]:
    """a − b: mean and 95 % interval (lo, hi); paired over shared seeds, else Welch."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 and set(a) == set(b):
        mu, h, _ = interval([a[s] - b[s] for s in shared])
        return mu, mu - h, mu + h, f"paired, {len(shared)} seeds"
    ma, ha, na = interval(list(a.values()))
    mb, hb, nb = interval(list(b.values()))
    if na < 2 or nb < 2:
        mu = ma - mb
        return mu, -math.inf, math.inf, f"{na} vs {nb} seeds: no interval"
    va, vb = statistics.variance(a.values()), statistics.variance(b.values())
    se2 = va / na + vb / nb
    df = (
        se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)) if se2 > 0 else na + nb - 2
    )
    h = t975(df) * math.sqrt(se2)
    mu = ma - mb
    return mu, mu - h, mu + h, f"Welch, {na} vs {nb} seeds"


def verdict(lo: float, hi: float, margin: float) -> str:
    if lo > 0:
        return "reproduced"
    if hi < margin:
        return "not reproduced"
    return "inconclusive"


def judge(claim: Claim, finals: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """One claim against the final evaluations (arm → seed → row)."""

    def per_seed(arm: str) -> dict[int, float]:
        rows = finals.get(arm, {})
        sign = 1.0 if claim.higher else -1.0
        return {
            s: sign * float(r[claim.metric])
            for s, r in rows.items()
            if isinstance(r.get(claim.metric), (int, float)) and math.isfinite(r[claim.metric])
        }

    a, b = per_seed(claim.better), per_seed(claim.than)
    mu, lo, hi, how = difference(a, b)
    few = min(len(a), len(b)) < MIN_SEEDS
    return {
        "claim": claim.name,
        "metric": claim.metric,
        "diff": mu,
        "lo": lo,
        "hi": hi,
        "how": how,
        "margin": claim.margin,
        "verdict": "inconclusive"
        if few or not math.isfinite(mu)
        else verdict(lo, hi, claim.margin),
    }
