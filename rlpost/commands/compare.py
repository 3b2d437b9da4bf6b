"""`rlpost compare launch/compare/<name>.yaml`: several algorithms, one task, one base model, one
budget; evaluated at intervals; a CSV, plots and a report.

A compare file:

    name: grpo_vs_grpo_d
    description: GRPO-D's KL schedule against GRPO's fixed beta
    overrides: {model.path: tiny:small, data.train: "task:arithmetic?digits=1&ops=+"}  # every run
    runs:
      - {label: grpo, recipe: launch/recipes/grpo_tiny.yaml}
      - {label: grpo_d, recipe: launch/recipes/grpo_d_tiny.yaml, overrides: [algorithm.kl.end=0.04]}
    seeds: [0, 1]
    budget: {steps: 20, wall_s: 0}    # steps sets every schedule; wall_s > 0 also stops early
    eval_every: 5
    eval_prompts: 64

Each (run, seed) is ``rlpost train`` in a subprocess (sharing a Ray cluster through RAY_ADDRESS
when set), with ``trainer.eval_every`` so the trainer logs ``eval/*`` metrics; step 0 is the base
model evaluated by ``rlpost eval`` with the same protocol. Output in
``<output_dir>/compare-<name>/``: results.csv, *.png, report.md, runs/, logs/.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlpost import preflight, resources
from rlpost.commands.claims import Claim, interval, judge, parse_claims
from rlpost.config import Config, ConfigError, load_config
from rlpost.evaluation import IN_LOOP_SAMPLES
from rlpost.tracking import read_metrics, write_text_atomic

CSV_FIELDS = [
    "algorithm",
    "seed",
    "step",
    "samples",
    "wall_s",
    "reward",
    "accuracy",
    "accuracy_sampled",
    "pass_at_k",
    "kl",
    "diversity",
    "distinct_2",
    "self_meteor",
    "length",
    "train_reward",
]
# metric -> (CSV column, higher is better, label)
WINNER_METRICS = [
    ("accuracy", True, "final greedy accuracy"),
    ("accuracy_sampled", True, "final sampled accuracy"),
    ("reward", True, "final eval reward"),
    ("kl", False, "lowest KL to the reference"),
    ("diversity", True, "most diverse samples"),
    ("self_meteor", False, "least alike samples of one prompt (self-METEOR)"),
    ("wall_s", False, "least training wall time"),
]
PLOTS = [
    ("reward", "step", "reward_vs_step.png"),
    ("accuracy", "step", "accuracy_vs_step.png"),
    ("reward", "wall_s", "reward_vs_wall.png"),
    ("accuracy", "wall_s", "accuracy_vs_wall.png"),
]
FRONTIER = "accuracy_vs_kl.png"
TOP_KEYS = {
    "name",
    "description",
    "overrides",
    "runs",
    "seeds",
    "budget",
    "eval_every",
    "eval_prompts",
    "baseline",
    "measure_kl",
    "retries",
    "output_dir",
    "parallel",
    "claims",
}


# ----------------------------------------------------------------------------- the compare file
@dataclass
class RunSpec:
    label: str
    recipe: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class CompareSpec:
    name: str
    runs: list[RunSpec]
    description: str = ""
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 10
    wall_s: float = 0.0
    eval_every: int = 5
    eval_prompts: int = 64
    baseline: bool = True
    measure_kl: bool = True
    retries: int = 1
    output_dir: str = "runs"
    parallel: int = 1
    source: str = ""
    claims: list[Claim] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) / f"compare-{self.name}"


def _override_list(value: Any, where: str) -> list[str]:
    """Overrides as a mapping {key: value} or a list of 'key=value' strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_yaml_scalar(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(x, str) and "=" in x for x in value):
        return list(value)
    raise ConfigError(
        f"{where}: expected a mapping or a list of 'key=value' strings, got {value!r}"
    )


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # flow style, so one-element and numeric lists stay lists
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def find_file(path: str, kind: str = "compare") -> str:
    """A path as given when it exists, else a shipped file (``launch/...`` or a bare name)."""
    found = resources.find(path, kind)
    return str(found) if found.exists() else path


def load_spec(path: str | Path, extra: Sequence[str] = ()) -> CompareSpec:
    """Parse and check a compare file; ``extra`` overrides apply to every run (after the file's)."""
    p = Path(find_file(str(path)))
    if not p.exists():
        raise ConfigError(f"compare file not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: YAML does not parse: {e}".replace("\n", " ")) from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    unknown = sorted(set(tree) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {unknown} (known: {', '.join(sorted(TOP_KEYS))})")
    runs_raw = tree.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(
            f"{p}: runs: a non-empty list of {{label, recipe, overrides}} is required"
        )
    runs = []
    for i, r in enumerate(runs_raw):
        if not isinstance(r, dict) or "recipe" not in r:
            raise ConfigError(f"{p}: runs[{i}]: needs at least 'recipe' (got {r!r})")
        bad = sorted(set(r) - {"label", "recipe", "overrides"})
        if bad:
            raise ConfigError(
                f"{p}: runs[{i}]: unknown key(s) {bad} (known: label, recipe, overrides)"
            )
        label = str(r.get("label") or Path(r["recipe"]).stem)
        r = {**r, "recipe": find_file(str(r["recipe"]), "recipe")}
        runs.append(
            RunSpec(
                label,
                str(r["recipe"]),
                _override_list(r.get("overrides"), f"{p}: runs[{i}].overrides"),
            )
        )
    labels = [r.label for r in runs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{p}: runs: duplicate label(s) {dup}; give each run a distinct label")
    budget = tree.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"steps", "wall_s"}:
        raise ConfigError(f"{p}: budget: expected {{steps: N, wall_s: S}}, got {budget!r}")
    seeds = tree.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{p}: seeds: a list of integers (or a count), got {seeds!r}")
    spec = CompareSpec(
        name=str(tree.get("name") or p.stem),
        runs=runs,
        description=str(tree.get("description", "")),
        overrides=_override_list(tree.get("overrides"), f"{p}: overrides") + list(extra),
        seeds=seeds,
        steps=int(budget.get("steps", 10)),
        wall_s=float(budget.get("wall_s", 0) or 0),
        eval_every=int(tree.get("eval_every", 5)),
        eval_prompts=int(tree.get("eval_prompts", 64)),
        baseline=bool(tree.get("baseline", True)),
        measure_kl=bool(tree.get("measure_kl", True)),
        retries=int(tree.get("retries", 1)),
        output_dir=str(tree.get("output_dir", "runs")),
        parallel=int(tree.get("parallel", 1)),
        source=str(p),
    )
    spec.claims = parse_claims(tree.get("claims"), str(p), labels, CSV_FIELDS[4:])
    for key in ("steps", "eval_every", "eval_prompts", "parallel"):
        val = spec.steps if key == "steps" else getattr(spec, key)
        if val < 1:
            raise ConfigError(
                f"{p}: {'budget.' if key == 'steps' else ''}{key}: must be >= 1, got {val}"
            )
    return spec


def run_overrides(spec: CompareSpec, run: RunSpec, seed: int) -> list[str]:
    """What one (run, seed) is trained with: recipe, then the shared and run overrides, then the
    budget, seed and evaluation schedule that make the runs comparable."""
    out = list(spec.overrides) + list(run.overrides)
    out += [
        f"trainer.output_dir={spec.out_dir / 'runs'}",
        f"trainer.run_name={run_name(run.label, seed)}",
        f"trainer.seed={seed}",
        f"rollout.seed={seed}",
        f"trainer.steps={spec.steps}",
        f"trainer.eval_every={spec.eval_every}",
        f"trainer.eval_prompts={spec.eval_prompts}",
        f"data.eval_size={spec.eval_prompts}",  # a task's eval split: that many distinct problems
        "trainer.resume=false",
        "logging.progress=false",
    ]
    if spec.measure_kl:
        # KL on eval prompts even when the loss has no KL term (quoted: YAML reads a bare on as true)
        out.append("reference.enabled='on'")
    return out


def run_name(label: str, seed: int) -> str:
    return f"{label}-s{seed}"


def check_runs(spec: CompareSpec) -> dict[str, Config]:
    """Build every run's config before anything starts (errors name the run and the key)."""
    cfgs = {}
    for run in spec.runs:
        try:
            cfgs[run.label] = load_config(run.recipe, run_overrides(spec, run, spec.seeds[0]))
            preflight.check(cfgs[run.label])
        except ConfigError as e:
            raise ConfigError(f"{spec.source}: run '{run.label}' ({run.recipe}): {e}") from e
    return cfgs


# ----------------------------------------------------------------------------- running
def _cli() -> list[str]:
    return [sys.executable, "-m", "rlpost.cli"]


def _cum_train_seconds(metrics_path: Path) -> float:
    if not metrics_path.exists():
        return 0.0
    total = 0.0
    for line in metrics_path.read_text().splitlines():
        try:
            total += float(json.loads(line).get("timing_s/step") or 0.0)
        except (json.JSONDecodeError, TypeError, ValueError):
            continue
    return total


DONE_MARKER = "compare_done.json"  # in a run dir: the command that finished it and its status


def run_one(spec: CompareSpec, run: RunSpec, seed: int) -> dict[str, Any]:
    """Train one (run, seed) in a subprocess (retried on failure); returns its status."""
    name = run_name(run.label, seed)
    logs = spec.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_dir = spec.out_dir / "runs" / name
    status: dict[str, Any] = {"run": name, "label": run.label, "seed": seed, "ok": False}
    cmd = _cli() + ["train", run.recipe, *run_overrides(spec, run, seed)]
    done = run_dir / DONE_MARKER
    if done.exists():  # finished by an earlier invocation with this very command: reuse it
        old = json.loads(done.read_text())
        if old.get("cmd", [])[1:] == cmd[1:]:  # the interpreter's path may differ
            print(f"[compare] {name}: reusing the finished run in {run_dir}", flush=True)
            return {**old["status"], "reused": True}
    for attempt in range(spec.retries + 1):
        if run_dir.exists():  # a failed attempt's metrics must not mix with the retry's
            shutil.rmtree(run_dir, ignore_errors=True)
        log_path = logs / f"{name}.log" if attempt == 0 else logs / f"{name}.retry{attempt}.log"
        t0 = time.time()
        stopped = False
        with log_path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
            while proc.poll() is None:
                time.sleep(1.0)
                if spec.wall_s and not stopped:
                    if _cum_train_seconds(run_dir / "metrics.jsonl") >= spec.wall_s:
                        proc.send_signal(signal.SIGINT)  # the trainer tears its actors down
                        stopped = True
            rc = proc.wait()
        status.update(
            seconds=time.time() - t0, returncode=rc, log=str(log_path), attempts=attempt + 1
        )
        if rc == 0 or (stopped and (run_dir / "metrics.jsonl").exists()):
            status.update(ok=True, stopped_by_wall=stopped)
            done.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(done, json.dumps({"cmd": cmd, "status": status}))
            return status
        print(
            f"[compare] {name}: attempt {attempt + 1} failed (exit {rc}); log: {log_path}",
            flush=True,
        )
        if rc == 2:  # a config error: the same again on retry
            break
    status["error"] = _tail(Path(status["log"]))
    return status


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in text if "Error" in ln or "error" in ln][-5:]
    return "\n".join(keep or text[-lines:])


def baseline_eval(spec: CompareSpec, cfg: Config, seed: int) -> dict[str, Any]:
    """Step 0: the base model under the in-loop protocol (greedy + IN_LOOP_SAMPLES samples)."""

    out = spec.out_dir / "baseline" / f"s{seed}.json"
    want = {
        "model": str(Path(cfg.model.path)),
        "data": cfg.data.eval or cfg.data.train,
        "limit": spec.eval_prompts,
        "seed": seed,
        "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    if out.exists():  # reuse only an evaluation of this very base, data and protocol
        old = json.loads(out.read_text())
        if all(old.get(k) == v for k, v in want.items()):
            return old
    cmd = _cli() + [
        "eval",
        "--model",
        cfg.model.path,
        "--data",
        cfg.data.eval or cfg.data.train,
        "--limit",
        str(spec.eval_prompts),
        "--n",
        str(IN_LOOP_SAMPLES),
        "--k",
        f"1,{IN_LOOP_SAMPLES}",
        "--temperature",
        str(cfg.rollout.temperature),
        "--max-new-tokens",
        str(cfg.rollout.max_new_tokens),
        "--seed",
        str(seed),
        "--ref",
        cfg.reference.path or cfg.model.path,
        "--out",
        str(out),
    ]
    for fn in cfg.reward.functions:
        cmd += ["--reward", fn]
    logs = spec.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"baseline-s{seed}.log"
    for _ in range(spec.retries + 1):
        with log_path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        if rc == 0 and out.exists():
            return json.loads(out.read_text())
    raise RuntimeError(f"baseline eval (seed {seed}) failed; log: {log_path}\n{_tail(log_path)}")


def run_all(spec: CompareSpec, cfgs: dict[str, Config]) -> tuple[list[dict], dict[int, dict]]:
    """Baselines, then every (run, seed), sequentially or ``spec.parallel`` at a time."""
    baselines: dict[int, dict] = {}
    first = cfgs[spec.runs[0].label]
    bases = {(c.model.path, c.data.eval or c.data.train) for c in cfgs.values()}
    if len(bases) > 1:
        print(f"[compare] warning: runs differ in base model or data: {sorted(bases)}", flush=True)
    if spec.baseline:
        for seed in spec.seeds:
            print(f"[compare] baseline eval of {first.model.path} (seed {seed})", flush=True)
            try:
                baselines[seed] = baseline_eval(spec, first, seed)
            except RuntimeError as e:
                print(f"[compare] {e}", flush=True)
    jobs = [(run, seed) for seed in spec.seeds for run in spec.runs]

    def go(job: tuple[RunSpec, int]) -> dict:
        run, seed = job
        print(f"[compare] train {run_name(run.label, seed)} ({run.recipe})", flush=True)
        st = run_one(spec, run, seed)
        state = "done" if st["ok"] else "FAILED"
        print(
            f"[compare] {st['run']}: {state} in {st['seconds']:.0f}s (log: {st['log']})", flush=True
        )
        return st

    if spec.parallel > 1:
        with ThreadPoolExecutor(spec.parallel) as pool:
            statuses = list(pool.map(go, jobs))
    else:
        statuses = [go(j) for j in jobs]
    return statuses, baselines


# ----------------------------------------------------------------------------- results
def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def rows_from_metrics(label: str, seed: int, metrics: list[dict]) -> list[dict]:
    """One CSV row per step that has ``eval/*`` metrics; wall_s sums training step times (actor
    start-up and evaluation excluded), samples counts trained rows."""
    rows, wall, samples, train_rewards = [], 0.0, 0.0, []
    for m in metrics:
        wall += _num(m.get("timing_s/step")) if m.get("timing_s/step") is not None else 0.0
        samples += _num(m.get("batch/rows")) if m.get("batch/rows") is not None else 0.0
        if m.get("reward/mean") is not None:
            train_rewards.append(_num(m["reward/mean"]))
        if m.get("eval/accuracy") is None and m.get("eval/reward_mean") is None:
            continue
        pass_keys = sorted(
            (k for k in m if k.startswith("eval/pass@")), key=lambda k: int(k.split("@")[1])
        )
        rows.append(
            {
                "algorithm": label,
                "seed": seed,
                "step": int(m["step"]),
                "samples": int(samples),
                "wall_s": round(wall, 3),
                "reward": _num(m.get("eval/reward_mean")),
                "accuracy": _num(m.get("eval/accuracy")),
                "accuracy_sampled": _num(m.get("eval/accuracy_sampled")),
                "pass_at_k": _num(m.get(pass_keys[-1])) if pass_keys else float("nan"),
                "kl": _num(m.get("eval/kl")),
                "diversity": _num(m.get("eval/diversity")),
                "distinct_2": _num(m.get("eval/distinct_2")),
                "self_meteor": _num(m.get("eval/self_meteor")),
                "length": _num(m.get("eval/length_mean")),
                "train_reward": statistics.fmean(train_rewards) if train_rewards else float("nan"),
            }
        )
        train_rewards = []
    return rows


def baseline_row(label: str, seed: int, result: dict) -> dict:
    """Step 0 of a run: the shared base model's `rlpost eval` result."""
    pass_keys = sorted((k for k in result if k.startswith("pass@")), key=lambda k: int(k[5:]))
    return {
        "algorithm": label,
        "seed": seed,
        "step": 0,
        "samples": 0,
        "wall_s": 0.0,
        "reward": _num(result.get("reward_mean")),
        "accuracy": _num(result.get("accuracy")),
        "accuracy_sampled": _num(result.get("accuracy_sampled")),
        "pass_at_k": _num(result.get(pass_keys[-1])) if pass_keys else float("nan"),
        "kl": 0.0,
        "diversity": _num(result.get("diversity")),
        "distinct_2": _num(result.get("distinct_2")),
        "self_meteor": _num(result.get("self_meteor")),
        "length": _num(result.get("length_mean")),
        "train_reward": float("nan"),
    }


def collect_rows(spec: CompareSpec, baselines: dict[int, dict]) -> list[dict]:

    rows = []
    for seed in spec.seeds:
        for run in spec.runs:
            path = spec.out_dir / "runs" / run_name(run.label, seed) / "metrics.jsonl"
            if seed in baselines:
                rows.append(baseline_row(run.label, seed, baselines[seed]))
            if path.exists():
                rows += rows_from_metrics(run.label, seed, read_metrics(path))
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if _isnan(r.get(k)) else r.get(k)) for k in CSV_FIELDS})
    return path


def read_csv(path: Path) -> list[dict]:
    out = []
    with path.open() as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {"algorithm": r["algorithm"]}
            for k in CSV_FIELDS[1:]:
                row[k] = _num(r.get(k)) if r.get(k, "") != "" else float("nan")
            row["seed"], row["step"] = int(row["seed"]), int(row["step"])
            out.append(row)
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    vals = [v for v in values if not _isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def final_step(spec: CompareSpec) -> int | None:
    """The step of the budget's last evaluation; None when a wall budget may end runs earlier."""
    if spec.wall_s or not spec.eval_every:
        return None
    return spec.steps // spec.eval_every * spec.eval_every


def final_rows(rows: list[dict], step: int | None = None) -> dict[str, dict[int, dict]]:
    """algorithm -> seed -> its final evaluation: the row at ``step``, so a run that failed or is
    still going is left out rather than judged on an early evaluation; without ``step``, the
    highest step. The base's step-0 row is never a final."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["step"] == 0 or (step is not None and r["step"] != step):
            continue
        cur = out.setdefault(r["algorithm"], {}).get(r["seed"])
        if cur is None or r["step"] > cur["step"]:
            out[r["algorithm"]][r["seed"]] = r
    return out


def summary(
    rows: list[dict], step: int | None = None
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """algorithm -> metric -> (mean, std, seeds) of the final evaluation (see ``final_rows``),
    plus the gain in accuracy over step 0 (``accuracy_gain``) where a baseline exists."""
    finals = final_rows(rows, step)
    base = {(r["algorithm"], r["seed"]): r["accuracy"] for r in rows if r["step"] == 0}
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for alg, by_seed in finals.items():
        m = {k: mean_std([r[k] for r in by_seed.values()]) for k, _, _ in WINNER_METRICS}
        m["step"] = mean_std([float(r["step"]) for r in by_seed.values()])
        gains = [
            r["accuracy"] - base[(alg, s)]
            for s, r in by_seed.items()
            if (alg, s) in base and r["step"] > 0
        ]
        m["accuracy_gain"] = mean_std(gains)
        # over-optimisation shows as accuracy falling back from its peak while training reward rises
        peaks = {}
        for r in rows:
            if r["algorithm"] == alg and r["seed"] in by_seed and r["step"] > 0:
                if not _isnan(r["accuracy"]):
                    peaks[r["seed"]] = max(peaks.get(r["seed"], -math.inf), r["accuracy"])
        m["accuracy_peak"] = mean_std(list(peaks.values()))
        m["train_reward"] = mean_std([r["train_reward"] for r in by_seed.values()])
        out[alg] = m
    return out


def winners(summ: dict[str, dict[str, tuple[float, float, int]]]) -> list[str]:
    """One sentence per metric: who won, by how much, and whether it is within the spread."""
    lines = []
    for key, higher, label in WINNER_METRICS:
        ranked = [(a, m[key]) for a, m in summ.items() if m[key][2] > 0]
        if not ranked:
            continue
        ranked.sort(key=lambda x: x[1][0], reverse=higher)
        (best, (mu, sd, n)) = ranked[0]
        text = f"**{label}**: {best} ({_fmt(mu)} ± {_fmt(sd)}, {n} seed{'s' if n != 1 else ''})"
        if len(ranked) > 1:
            (second, (mu2, sd2, n2)) = ranked[1]
            gap = abs(mu - mu2)
            if gap < 1e-9:
                text += f", tied with {second} ({_fmt(mu2)} ± {_fmt(sd2)})"
            else:
                text += f", ahead of {second} ({_fmt(mu2)} ± {_fmt(sd2)}) by {_fmt(gap)}"
                if n < 2 or n2 < 2:
                    text += " — one seed, no spread: indicative only"
                elif gap <= sd + sd2:
                    text += " — within the spread across seeds: not a clear win"
        lines.append(text)
    return lines


def _fmt(v: float) -> str:
    if _isnan(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


# ----------------------------------------------------------------------------- plots
def _curves(
    rows: list[dict], y: str, x: str
) -> dict[str, tuple[list[float], list[float], list[float], list[float]]]:
    """algorithm -> (x mean, y mean, y min, y max) per step, across seeds."""
    by: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        by.setdefault(r["algorithm"], {}).setdefault(r["step"], []).append(r)
    out = {}
    for alg, steps in by.items():
        xs, ys, lo, hi = [], [], [], []
        for step in sorted(steps):
            vals = [r[y] for r in steps[step] if not _isnan(r[y])]
            xv = [r[x] for r in steps[step] if not _isnan(r[x])]
            if not vals or not xv:
                continue
            xs.append(statistics.fmean(xv))
            ys.append(statistics.fmean(vals))
            lo.append(min(vals))
            hi.append(max(vals))
        out[alg] = (xs, ys, lo, hi)
    return out


def write_plots(rows: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    """Metric-vs-step and metric-vs-wall curves (mean over seeds, min–max band) and the
    accuracy-vs-KL frontier, as PNGs (matplotlib, Agg backend)."""
    import matplotlib  # heavy: only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    labels = {"step": "optimizer step", "wall_s": "training wall time (s)"}
    for y, x, fname in PLOTS:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for alg, (xs, ys, lo, hi) in _curves(rows, y, x).items():
            if not xs:
                continue
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=alg)
            if any(a != b for a, b in zip(lo, hi)):
                ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_xlabel(labels[x])
        ax.set_ylabel(f"eval {y}")
        ax.set_title(f"{title}: {y} vs {labels[x].split(' (')[0]}".strip(": "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for alg, (xs, ys, _, _) in _curves(rows, "accuracy", "kl").items():
        if not xs:
            continue
        (line,) = ax.plot(xs, ys, marker="o", ms=3, alpha=0.7, label=alg)
        ax.plot(xs[-1:], ys[-1:], marker="*", ms=12, color=line.get_color())
    ax.set_xlabel("KL(π‖π_ref) per completion (eval prompts)")
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"{title}: accuracy vs KL (★ = last eval)".strip(": "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / FRONTIER
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths


# ----------------------------------------------------------------------------- the report
def render_report(
    spec: CompareSpec,
    rows: list[dict],
    statuses: list[dict] | None = None,
    plots: Sequence[Path] = (),
    commands: Sequence[str] = (),
) -> str:
    last = final_step(spec)
    summ = summary(rows, last)
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# Compare: {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"Runs: {', '.join(f'`{r.label}` ({r.recipe})' for r in spec.runs)}. "
        f"Budget: {spec.steps} steps"
        + (f" or {spec.wall_s:g} s of training" if spec.wall_s else "")
        + f"; seeds {seeds or spec.seeds}; evaluated every {spec.eval_every} steps on "
        f"{spec.eval_prompts} held-out prompts (greedy accuracy; KL and diversity from 4 "
        "samples per prompt). Step 0 is the shared base model.",
        "",
    ]
    if spec.overrides:
        shared = {o.split("=", 1)[0]: o for o in spec.overrides}  # later overrides win
        lines += ["Shared overrides: " + " ".join(f"`{o}`" for o in shared.values()), ""]
    if commands:
        lines += ["Reproduce:", "", "```", *commands, "```", ""]
    failed = [s for s in statuses or [] if not s.get("ok")]
    if failed:
        lines += ["## Failed runs", ""]
        for s in failed:
            lines.append(f"- `{s['run']}` exited {s.get('returncode')} — log `{s.get('log')}`")
        lines.append("")
    finals = final_rows(rows, last)
    missing = [
        run_name(r.label, s)
        for r in spec.runs
        for s in spec.seeds
        if s not in finals.get(r.label, {})
    ]
    if missing:
        lines += [
            f"Not in the final evaluation (failed, or not at step {last} yet): "
            + ", ".join(f"`{m}`" for m in missing),
            "",
        ]
    base_acc = mean_std([r["accuracy"] for r in rows if r["step"] == 0])
    lines += ["## Summary (final evaluation, mean ± std over seeds)", ""]
    if base_acc[2]:
        lines += [f"Base model accuracy (step 0): {_fmt(base_acc[0])} ± {_fmt(base_acc[1])}.", ""]
    head = ["algorithm", "seeds", "step", "accuracy", "gain vs base", "peak acc.", "sampled acc.",
            "reward", "train reward", "KL", "diversity", "self-METEOR", "wall s"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for alg, m in summ.items():
        cells = [
            alg,
            str(m["accuracy"][2] or m["reward"][2]),
            _fmt(m["step"][0]),
            *(
                f"{_fmt(m[k][0])} ± {_fmt(m[k][1])}"
                for k in (
                    "accuracy",
                    "accuracy_gain",
                    "accuracy_peak",
                    "accuracy_sampled",
                    "reward",
                    "train_reward",
                    "kl",
                    "diversity",
                    "self_meteor",
                    "wall_s",
                )  # fmt: skip
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Who won what", ""]
    lines += [f"- {w}" for w in winners(summ)] or ["- no evaluated runs"]
    lines += [""]
    lines += claims_section(spec.claims, rows, last)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines += [""]
    lines += ["## All evaluations", "", "(also in `results.csv`)", ""]
    cols = ["algorithm", "seed", "step", "wall_s", "accuracy", "accuracy_sampled", "reward",
            "kl", "diversity", "train_reward"]  # fmt: skip
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in sorted(rows, key=lambda r: (r["algorithm"], r["seed"], r["step"])):
        lines.append(
            "| "
            + " | ".join(
                str(r[c]) if c in ("algorithm", "seed", "step") else _fmt(r[c]) for c in cols
            )
            + " |"  # fmt: skip
        )
    lines.append("")
    return "\n".join(lines)


def _ci(mu: float, h: float) -> str:
    return f"{_fmt(mu)} [{_fmt(mu - h)}, {_fmt(mu + h)}]" if math.isfinite(h) else f"{_fmt(mu)}"


def claims_section(claims: Sequence[Claim], rows: list[dict], step: int | None = None) -> list[str]:
    """95 % intervals of the final accuracy and KL per arm, and each claim's verdict."""
    finals = final_rows(rows, step)
    out = ["## 95 % intervals over seeds (final evaluation)", ""]
    out += ["| arm | seeds | accuracy | KL | reward |", "| --- | --- | --- | --- | --- |"]
    for arm, by_seed in finals.items():
        cells = [interval([r[k] for r in by_seed.values()]) for k in ("accuracy", "kl", "reward")]
        out.append(
            f"| {arm} | {cells[0][2]} | " + " | ".join(_ci(m, h) for m, h, _ in cells) + " |"
        )
    out.append("")
    if not claims:
        return out
    out += ["## Claims", "", "| claim | metric | difference [95 % interval] | smallest effect that "
            "matters | verdict |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in claims:
        j = judge(c, finals)
        diff = f"{_fmt(j['diff'])} [{_fmt(j['lo'])}, {_fmt(j['hi'])}] ({j['how']})"
        out.append(
            f"| {j['claim']} | {j['metric']} | {diff} | {_fmt(j['margin'])} | **{j['verdict']}** |"
        )
    out += ["", "Reproduced: the interval lies above 0. Not reproduced: it lies below the smallest "
            "effect that matters. Inconclusive: it holds both.", ""]  # fmt: skip
    return out


def write_outputs(
    spec: CompareSpec,
    rows: list[dict],
    statuses: list[dict] | None = None,
    commands: Sequence[str] = (),
) -> dict[str, Path]:
    out = spec.out_dir
    csv_path = write_csv(rows, out / "results.csv")
    plots = write_plots(rows, out, spec.name) if rows else []
    report = out / "report.md"
    report.write_text(render_report(spec, rows, statuses, plots, commands))
    if statuses is not None:
        (out / "status.json").write_text(json.dumps(statuses, indent=2) + "\n")
    return {"csv": csv_path, "report": report, **{p.stem: p for p in plots}}


# ----------------------------------------------------------------------------- the CLI
def compare(spec: CompareSpec, report_only: bool = False) -> tuple[dict[str, Path], list[dict]]:
    cfgs = check_runs(spec)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    statuses: list[dict] | None = None
    baselines: dict[int, dict] = {}
    if report_only:
        for seed in spec.seeds:
            p = spec.out_dir / "baseline" / f"s{seed}.json"
            if p.exists():
                baselines[seed] = json.loads(p.read_text())
        st = spec.out_dir / "status.json"
        statuses = json.loads(st.read_text()) if st.exists() else None
    else:
        statuses, baselines = run_all(spec, cfgs)
    rows = collect_rows(spec, baselines)
    paths = write_outputs(spec, rows, statuses, [reproduce_command(spec)])
    return paths, statuses or []


def reproduce_command(spec: CompareSpec) -> str:
    """The command that gives this spec again: the file, then whatever the command line changed
    (extra overrides, --seeds, --steps, --output-dir), so a report names where its runs are."""
    file = load_spec(spec.source)
    cmd = [f"rlpost compare {spec.source}", *spec.overrides[len(file.overrides) :]]
    if spec.seeds != file.seeds:
        cmd.append(f"--seeds {','.join(map(str, spec.seeds))}")
    if spec.steps != file.steps:
        cmd.append(f"--steps {spec.steps}")
    if spec.output_dir != file.output_dir:
        cmd.append(f"--output-dir {spec.output_dir}")
    return " ".join(cmd)


def _compare(args: argparse.Namespace) -> int:
    spec = load_spec(args.config, args.overrides)
    if args.seeds:
        spec.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.output_dir:
        spec.output_dir = args.output_dir
    if args.parallel:
        spec.parallel = args.parallel
    if args.steps:
        spec.steps = args.steps
    paths, statuses = compare(spec, report_only=args.report_only)
    print(f"results: {paths['csv']}")
    print(f"report: {paths['report']}")
    failed = [s["run"] for s in statuses if not s.get("ok")]
    if failed:
        print(f"failed runs: {', '.join(failed)} (see logs in {spec.out_dir / 'logs'})")
        return 1
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run several algorithms on one task and budget; CSV, plots and a report",
        description=(
            "Train every run of a compare file (launch/compare/*.yaml) for each seed, evaluate "
            "at intervals, and write results.csv, PNG plots and report.md to "
            "<output_dir>/compare-<name>/. Extra overrides apply to every run."
        ),
    )
    p.add_argument("config", help="compare file, e.g. launch/compare/grpo_vs_grpo_d.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run: key=value")
    p.add_argument("--seeds", default="", help="comma-separated seeds (default: the file's)")
    p.add_argument("--steps", type=int, default=0, help="step budget (default: the file's)")
    p.add_argument("--parallel", type=int, default=0, help="runs at a time (default: the file's)")
    p.add_argument("--output-dir", default="", help="parent of compare-<name>/ (default: runs)")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild CSV, plots and report from the runs"
    )
    p.set_defaults(func=_compare)
