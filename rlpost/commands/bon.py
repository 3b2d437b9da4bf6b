"""`rlpost bon`: best-of-n against proxy reward models, gold score vs KL (Coste et al. 2023's
first experiment; Gao et al. 2023's protocol).

From the base policy, N samples per held-out prompt; every proxy reward model scores each sample,
and so does the gold (the task's verifier, or ``--gold``). For n = 1, 2, 4, …, N the expected gold
score of the sample a proxy ranks best among n is computed from all N samples at once, without
resampling: the sample ranked i-th lowest of N is the maximum of a random n-subset with
probability C(i−1, n−1) / C(N, n). Best-of-n sits at KL(π_bon‖π) = log n − (n−1)/n nats.

Proxies: each member alone (``single``: the mean over members, with their range) and the
ensembles ``mean`` / ``wco`` / ``uwo`` of all members, each member first normalised to mean 0, std
1 on a calibration set (``--calibration``, else the samples themselves).

Each ensemble is set against the single proxy paired by prompt: the mean difference in gold at
every n with its 95 % interval over prompts, and the verdict the compare claims use. The interval
covers which prompts were drawn, not which proxies were trained.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from rewards.ensemble import Ensemble, FixedNormalizer, combine, load_calibration
from rlpost.commands.claims import difference, verdict
from rlpost.commands.rm import gold_config, resolve_model, sample_and_score
from rlpost.data import DataError, load_prompts
from rlpost.models.hf import load_tokenizer

MODES = ("mean", "wco", "uwo")
BON_MARGIN = 0.01  # the smallest gold difference that matters (the verdicts' margin)


def bon_kl(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n−1)/n (Stiennon et al. 2020's analytic bound)."""
    return math.log(n) - (n - 1) / n


def bon_gold(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> float:
    """Expected gold score of the proxy's best of n, averaged over prompts."""
    return float(bon_gold_per_prompt(proxy, gold, n).mean())


def bon_gold_per_prompt(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> torch.Tensor:
    """Expected gold score of the proxy's best of n for each prompt, from all N samples.
    ``proxy``, ``gold``: [P, N]; of samples the proxy ties, the later one ranks higher."""
    p, big_n = proxy.shape
    if not 1 <= n <= big_n:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {big_n} samples per prompt")
    order = torch.argsort(proxy.double(), dim=1, stable=True)
    ranked = torch.gather(gold.double(), 1, order)  # gold of the samples, proxy-ascending
    i = torch.arange(1, big_n + 1, dtype=torch.float64)
    # log C(i−1, n−1) − log C(N, n), zero probability below rank n
    log_c = (
        torch.lgamma(i) - torch.lgamma(torch.tensor(float(n))) - torch.lgamma(i - n + 1)
    ).where(i >= n, torch.tensor(-math.inf, dtype=torch.float64))
    log_total = math.lgamma(big_n + 1) - math.lgamma(n + 1) - math.lgamma(big_n - n + 1)
    weights = torch.exp(log_c - log_total)
    return (ranked * weights).sum(1)


def doubling(n_max: int) -> list[int]:
    ns, n = [], 1
    while n < n_max:
        ns.append(n)
        n *= 2
    return ns + [n_max]


def bon_curves(
    raw: torch.Tensor,
    gold: torch.Tensor,
    ns: list[int],
    calibration: torch.Tensor | None = None,
    uwo_lambda: float = 1.0,
) -> dict[str, Any]:
    """``raw``: [M, P, N] member scores; ``gold``: [P, N]. Gold at each n for every proxy."""
    m, p, big_n = raw.shape
    flat = raw.reshape(m, p * big_n)
    norm = FixedNormalizer.from_scores(calibration if calibration is not None else flat)
    z = norm(flat.double()).reshape(m, p, big_n)
    per_member = [[bon_gold_per_prompt(z[k], gold, n) for n in ns] for k in range(m)]
    members = [[float(g.mean()) for g in row] for row in per_member]
    single = [torch.stack(col).mean(0) for col in zip(*per_member)]  # [P] per n
    curves: dict[str, Any] = {
        "single": [float(g.mean()) for g in single],
        "single_min": [min(col) for col in zip(*members)],
        "single_max": [max(col) for col in zip(*members)],
    }
    versus: dict[str, list[list[float]]] = {}
    for mode in MODES:
        combined = combine(z.reshape(m, -1), mode, uwo_lambda).reshape(p, big_n)
        per_prompt = [bon_gold_per_prompt(combined, gold, n) for n in ns]
        curves[mode] = [float(g.mean()) for g in per_prompt]
        versus[mode] = [  # the compare claims' paired difference, prompts in place of seeds
            list(difference(dict(enumerate(g.tolist())), dict(enumerate(s.tolist())))[:3])
            for g, s in zip(per_prompt, single)
        ]
    curves["gold"] = [bon_gold(gold, gold, n) for n in ns]  # the oracle's own best of n
    return {
        "n": ns,
        "kl": [bon_kl(n) for n in ns],
        "curves": curves,
        "members": members,
        "versus_single": versus,
    }


def report(result: dict[str, Any]) -> str:
    c = result["curves"]
    cols = ["single", "mean", "wco", "uwo", "gold"]
    lines = [
        f"Best-of-n from `{result['model']}` on {result['prompts']} prompts × {result['samples']} "
        f"samples; {result['proxies']} proxy reward models; gold: {result['gold_spec']}.",
        "",
        "| n | KL (nats) | " + " | ".join(cols) + " |",
        "| --- | --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    for i, (n, kl) in enumerate(zip(result["n"], result["kl"])):
        lines.append(f"| {n} | {kl:.3f} | " + " | ".join(f"{c[k][i]:.3f}" for k in cols) + " |")
    vs = result["versus_single"]
    lines += [
        "",
        f"Ensemble − single proxy, paired by prompt, mean [95 % interval over "
        f"{result['prompts']} prompts]:",
        "",
        "| n | " + " | ".join(f"{mode} − single" for mode in MODES) + " |",
        "| --- | " + " | ".join("---" for _ in MODES) + " |",
    ]
    for i, n in enumerate(result["n"]):
        lines.append(
            f"| {n} | "
            + " | ".join("{:.3f} [{:.3f}, {:.3f}]".format(*vs[m][i]) for m in MODES)
            + " |"
        )
    peak = max(range(len(result["n"])), key=lambda i: c["single"][i])
    for i, where in ((peak, "the single proxy's peak"), (len(result["n"]) - 1, "the largest n")):
        calls = ", ".join(f"{m} {verdict(vs[m][i][1], vs[m][i][2], BON_MARGIN)}" for m in MODES)
        lines += ["", f"Ensemble beats one proxy at {where} (n = {result['n'][i]}): {calls}."]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib  # heavy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    c, kl = result["curves"], result["kl"]
    (line,) = ax.plot(kl, c["single"], marker="o", ms=3, label="single proxy (mean of members)")
    ax.fill_between(kl, c["single_min"], c["single_max"], alpha=0.2, color=line.get_color())
    for mode in MODES:
        ax.plot(kl, c[mode], marker="o", ms=3, label=f"ensemble: {mode}")
    ax.set_xlabel("KL(best-of-n ‖ base) = log n − (n−1)/n  (nats)")
    ax.set_ylabel("gold score of the proxy's pick")
    ax.set_title("best-of-n: gold vs KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 2 or args.prompts < 1 or not args.rm:
        raise DataError("bon: need --n >= 2, --prompts >= 1 and at least one --rm")
    model_dir, cfg = gold_config(args.model, args.data, args.gold, args.seed, "bon: --gold")
    tok = load_tokenizer(str(model_dir))
    cfg.data.eval_size = max(cfg.data.eval_size, args.prompts)  # a task's split: as many as asked
    rows, seen = [], set()
    for row in load_prompts(cfg, tok, args.split):  # distinct held-out prompts
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    rows = rows[: args.prompts]
    if len(rows) < args.prompts:
        print(
            f"bon: {args.split} split has {len(rows)} distinct prompts (asked for {args.prompts})"
        )
    seeds = [args.seed * 1_000_003 + 104_729 + i * args.n for i in range(len(rows))]
    max_tokens = args.max_new_tokens or cfg.rollout.max_new_tokens
    scored, _, gen_s = sample_and_score(model_dir, cfg, rows, args.n, max_tokens, 1.0, seeds)
    gold = torch.tensor([[float(s or 0.0) for s in g] for g in scored.rewards])
    ensemble = Ensemble.from_paths([resolve_model(p) for p in args.rm], normalize="none")
    prompts = [r["prompt"] for r in rows for _ in range(args.n)]
    texts = [t for g in scored.texts for t in g]
    raw = ensemble.raw_scores(prompts, texts).reshape(len(args.rm), len(rows), args.n)
    calib = None
    if args.calibration:
        calib = ensemble.raw_scores(*load_calibration(args.calibration))
    result = bon_curves(raw, gold, doubling(args.n), calib, args.uwo_lambda)
    result.update(
        model=str(model_dir), prompts=len(rows), samples=args.n, proxies=len(args.rm),
        gold_spec=", ".join(args.gold) or cfg.data.train, gen_seconds=gen_s,
        calibration=args.calibration or "the samples",
    )  # fmt: skip
    return result


def main(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bon.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / "bon.md").write_text(text + "\n")
    plot(result, out / "bon_gold_vs_kl.png")
    print(text)
    print(f"wrote {out / 'bon.json'}, {out / 'bon.md'}, {out / 'bon_gold_vs_kl.png'}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bon", help="best-of-n against proxy reward models: gold vs KL, single vs ensembles"
    )
    p.add_argument("--model", required=True, help="the base policy (HF dir, run dir, tiny:PRESET)")
    p.add_argument("--data", default="", help="task:NAME?options or a prompt file")
    p.add_argument("--split", default="eval", help="which split's prompts (default: held out)")
    p.add_argument("--rm", action="append", default=[], help="a proxy reward model (repeat)")
    p.add_argument("--gold", action="append", default=[], help="gold reward spec (default: task)")
    p.add_argument("--calibration", default="", help="prompt/completion file for normalisation")
    p.add_argument("--prompts", type=int, default=200, help="distinct prompts")
    p.add_argument("--n", type=int, default=256, help="samples per prompt (the largest n)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = the data's default")
    p.add_argument("--uwo-lambda", type=float, default=1.0, help="UWO's variance weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bon", help="output directory")
    p.set_defaults(func=main)
