"""`rlpost demo` (`make demo`): from nothing to a comparison that shows learning, offline, on CPU.

1. build the ``small`` tiny model (random init, ~11M parameters);
2. SFT it briefly on two-number countdown so it solves part of the task (`rlpost sft`);
3. from that base, compare GRPO, GRPO-D and f-DPG on the same task and budget (`rlpost compare`),
   evaluating every few steps on held-out problems;
4. print the before/after accuracies and where the report is.

Every stage runs the real CLI in a subprocess (its own local Ray, or RAY_ADDRESS when set) and is
retried once, so a transient failure (e.g. a Ray node killed from outside) does not sink the demo;
a stage that still fails is named with its log. A finished stage is reused on a rerun unless
``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rlpost.commands.compare import final_rows, find_file, load_spec, mean_std, read_csv
from rlpost.models import tiny

SFT_RECIPE = "launch/recipes/sft_small.yaml"
COMPARE_FILE = "launch/compare/demo.yaml"
STEP_RE = re.compile(r" rlpost step (\d+) ")


class StageError(RuntimeError):
    """A demo stage failed; the message names the stage and its log."""


def shown(line: str) -> bool:
    """Progress worth echoing from a child's output: compare's own lines, every 10th step."""
    if line.startswith(("[compare]", "results:", "report:", "run directory:", "fine-tuned")):
        return True
    m = STEP_RE.search(line)
    return bool(m) and int(m.group(1)) % 10 == 0


def _run(stage: str, cmd: list[str], log_path: Path, retries: int = 1) -> float:
    """Run a CLI stage, everything into its log, progress lines to the console; retry on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for attempt in range(retries + 1):
        path = log_path if attempt == 0 else log_path.with_suffix(f".retry{attempt}.log")
        with path.open("w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if shown(line):
                    print("    " + line.rstrip()[:160], flush=True)
            rc = proc.wait()
        if rc == 0:
            return time.time() - t0
        print(f"[demo] {stage}: attempt {attempt + 1} exited {rc} (log: {path})", flush=True)
        if rc == 2:  # a config error: the same again on retry
            raise StageError(f"stage '{stage}' failed: configuration error; see {path}")
    raise StageError(f"stage '{stage}' failed after {retries + 1} attempts; see {path}")


def _banner(i: int, n: int, text: str) -> None:
    print(f"\n[demo {i}/{n}] {text}", flush=True)


def accuracy_table(csv_path: Path) -> dict[str, dict[str, float]]:
    """algorithm -> {before, after, best} greedy eval accuracy (means over seeds)."""

    rows = read_csv(csv_path)
    out: dict[str, dict[str, float]] = {}
    for alg, by_seed in final_rows(rows).items():
        base = [r["accuracy"] for r in rows if r["algorithm"] == alg and r["step"] == 0]
        best = [r["accuracy"] for r in rows if r["algorithm"] == alg and r["step"] > 0]
        out[alg] = {
            "before": mean_std(base)[0],
            "after": mean_std([r["accuracy"] for r in by_seed.values()])[0],
            "best": max(best) if best else float("nan"),
            "after_sampled": mean_std([r["accuracy_sampled"] for r in by_seed.values()])[0],
            "before_sampled": mean_std(
                [r["accuracy_sampled"] for r in rows if r["algorithm"] == alg and r["step"] == 0]
            )[0],
        }
    return out


def demo(args: argparse.Namespace) -> int:

    args.sft_recipe, args.compare = find_file(args.sft_recipe), find_file(args.compare)
    out = Path(args.output_dir)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "rlpost.cli"]
    times: dict[str, float] = {}
    compare_failed = ""
    t_all = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        _banner(1, 3, "tiny 'small' model (random init, built offline)")
        t0 = time.time()
        try:
            path = tiny.ensure("small")
        except Exception as e:  # noqa: BLE001 - name the stage, keep the cause
            raise StageError(f"stage 'model' failed: {type(e).__name__}: {e}") from e
        times["model"] = time.time() - t0
        print(f"model: {path} ({tiny.num_params(path) / 1e6:.1f}M parameters)")

        _banner(2, 3, f"SFT warm-up: {args.sft_recipe}")
        sft_dir = out / "sft"
        if (sft_dir / "final" / "config.json").exists():
            print(f"reusing {sft_dir / 'final'} (pass --fresh to redo)")
            times["sft"] = 0.0
        else:
            cmd = cli + [
                "sft",
                args.sft_recipe,
                f"trainer.output_dir={out}",
                "trainer.run_name=sft",
            ]
            if args.sft_steps:
                cmd.append(f"trainer.steps={args.sft_steps}")
            times["sft"] = _run("sft", cmd, out / "logs" / "sft.log")
            print(f"SFT done in {times['sft']:.0f}s: {sft_dir / 'final'}")

        _banner(3, 3, f"compare from the SFT base: {args.compare}")
        cmd = cli + ["compare", args.compare, f"model.path={sft_dir / 'final'}"]
        cmd += ["--output-dir", str(out)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        t0 = time.time()
        try:
            _run("compare", cmd, out / "logs" / "compare.log", retries=0)  # it retries its runs
        except StageError as e:
            # Failed runs are named in the report; without any results there is nothing to show.
            if not (out / f"compare-{_compare_name(args.compare)}" / "results.csv").exists():
                raise
            compare_failed = str(e)
        times["compare"] = time.time() - t0
    except StageError as e:
        print(f"\n[demo] FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        times["total"] = time.time() - t_all

    cmp_dir = out / f"compare-{_compare_name(args.compare)}"
    table = accuracy_table(cmp_dir / "results.csv")
    summary = {"seconds": times, "load_avg_at_start": load, "accuracy": table}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n[demo] held-out greedy accuracy (SFT base -> after RL; sampled in brackets):")
    learned = False
    for alg, a in table.items():
        print(
            f"  {alg:10s} {a['before']:.3f} -> {a['after']:.3f} (best {a['best']:.3f})   "
            f"[{a['before_sampled']:.3f} -> {a['after_sampled']:.3f}]"
        )
        learned |= a["after"] > a["before"]
    print(f"\n[demo] wall time: {times['total']:.0f}s (sft {times['sft']:.0f}s, compare "
          f"{times['compare']:.0f}s); load average at start {load:.2f}")  # fmt: skip
    print(f"[demo] report: {cmp_dir / 'report.md'}")
    if not learned:
        print("[demo] warning: no algorithm beat the SFT base this time", file=sys.stderr)
    if compare_failed:
        failed = _failed_runs(cmp_dir)
        print(f"[demo] FAILED runs: {', '.join(failed) or '?'} ({compare_failed})", file=sys.stderr)
        return 1
    return 0


def _compare_name(path: str) -> str:

    return load_spec(path).name


def _failed_runs(cmp_dir: Path) -> list[str]:
    status = cmp_dir / "status.json"
    if not status.exists():
        return []
    return [s["run"] for s in json.loads(status.read_text()) if not s.get("ok")]


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="offline demo: tiny model, SFT warm-up, compare GRPO / GRPO-D / f-DPG, report",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--output-dir", default="runs/demo", help="where everything goes")
    p.add_argument("--sft-recipe", default=SFT_RECIPE, help="SFT recipe for the base")
    p.add_argument("--compare", default=COMPARE_FILE, help="compare file for the RL stage")
    p.add_argument("--sft-steps", type=int, default=0, help="override the SFT steps")
    p.add_argument("--steps", type=int, default=0, help="override the RL step budget")
    p.add_argument("--fresh", action="store_true", help="delete --output-dir first")
    p.set_defaults(func=demo)
