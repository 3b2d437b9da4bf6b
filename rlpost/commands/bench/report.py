"""The bench's two outputs from one result dict: the markdown report a person reads and the JSON
file a script compares across commits. Pure functions of the dict (no Ray, no torch), so the
report is unit-tested on fixed figures.

Result layout (what ``rlpost.commands.bench`` builds)::

    {"device", "commit", "machine_start", "machine_end", "torch_threads_driver",
     "anchors": {name: {"recipe", "params_m", "prompts_per_step", "n", "max_new_tokens",
                        "torch_threads", "autocast", "epochs",
                        "arms": [{"off_policy_steps", "s_per_step", "startup_s", "generation_s",
                                  "phases", "peak_memory", "response_length_mean", ...}
                                 | {"off_policy_steps", "skipped"}],
                        "floor": {...} | None, "trl": {...} | None}}}
"""

from __future__ import annotations

import math
from typing import Any

# Per anchor in the JSON file; comparable across commits (None where an arm did not run).
SUMMARY_KEYS = (
    "rlpost_s_per_step",
    "floor_s_per_step",
    "trl_s_per_step",
    "generation_s",
    "startup_s",
    "off_policy_steps",
    "phases",
    "peak_memory",
    "response_length_mean",
    "vs_floor",
    "vs_trl",
)


def _ran(arm: dict[str, Any]) -> bool:
    return "skipped" not in arm and "error" not in arm


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def summarize(anchor: dict[str, Any]) -> dict[str, Any]:
    """The anchor's headline figures, taken from its synchronous arm (the first that ran), with
    every arm kept under ``arms`` for the side-by-side."""
    ran = [a for a in anchor.get("arms", []) if _ran(a)]
    base = next((a for a in ran if a["off_policy_steps"] == 0), ran[0] if ran else {})
    floor = anchor.get("floor") or {}
    trl = anchor.get("trl") or {}
    out = dict(anchor)
    out.update(
        rlpost_s_per_step=base.get("s_per_step"),
        floor_s_per_step=floor.get("floor_s_per_step"),
        trl_s_per_step=trl.get("s_per_step"),
        generation_s=base.get("generation_s"),
        startup_s=base.get("startup_s"),
        off_policy_steps=base.get("off_policy_steps"),
        phases=base.get("phases", {}),
        peak_memory=base.get("peak_memory", []),
        response_length_mean=base.get("response_length_mean"),
    )
    out["vs_floor"] = _ratio(out["rlpost_s_per_step"], out["floor_s_per_step"])
    out["vs_trl"] = _ratio(out["trl_s_per_step"], out["rlpost_s_per_step"])
    return out


def _clean(x: Any) -> Any:
    """NaN (a median of nothing) as null, so the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON file: the machine state and, per anchor, ``SUMMARY_KEYS`` plus the details."""
    head = {k: v for k, v in result.items() if k != "anchors"}
    return _clean({**head, "anchors": {n: summarize(a) for n, a in result["anchors"].items()}})


def _f(x: float | None, fmt: str = ".2f", none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def _memory_line(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        kids = f" + {r['children_mb']:.0f} in children" if r.get("children_mb") else ""
        parts.append(f"{r['actor']} {_f(r.get('self_mb'), '.0f', '?')}{kids}")
    return "; ".join(parts)


def _anchor_md(name: str, a: dict[str, Any]) -> list[str]:
    s = summarize(a)
    floor = a.get("floor") or {}
    trl = a.get("trl") or {}
    phases = ["generate", "score", "train", "sync"]
    lines = [
        f"## anchor `{name}` ({a['recipe']})",
        "",
        f"{a['params_m']:.1f}M params, {a['prompts_per_step']} prompts x {a['n']} samples, "
        f"{a['max_new_tokens']} new tokens (mean length generated: "
        f"{_f(s['response_length_mean'], '.0f')}), torch threads {a['torch_threads']}, "
        f"autocast {a['autocast']}, epochs {a['epochs']}",
        "",
        "| run | s/step | vs floor | TRL s / this | startup s | "
        + " | ".join(phases)
        + " | generation only s |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in phases) + " | --- |",
    ]
    trl_s = s["trl_s_per_step"]
    for arm in a.get("arms", []):
        label = f"rlpost, off_policy_steps={arm['off_policy_steps']}"
        if not _ran(arm):
            why = arm.get("skipped") or arm.get("error", "")
            lines.append(f"| {label} | skipped: {why} | | | | " + " | " * len(phases) + " |")
            continue
        step = arm["s_per_step"]
        ph = arm.get("phases", {})
        lines.append(
            f"| {label} | {_f(step)} | {_x(_ratio(step, s['floor_s_per_step']))} | "
            f"{_x(_ratio(trl_s, step))} | {_f(arm.get('startup_s'), '.1f')} | "
            + " | ".join(_f(ph.get(p)) for p in phases)
            + f" | {_f(arm.get('generation_s'))} |"
        )
    if s["floor_s_per_step"] is not None:
        pol = floor.get("policy_step_bf16_s", floor.get("policy_step_fp32_s"))
        lines.append(
            f"| floor (bare vLLM + PyTorch) | {_f(s['floor_s_per_step'])} | 1.00x | | | "
            f"{_f(floor.get('generation_s'))} | {_f(floor.get('reference_forward_s'))} | "
            f"{_f(pol)} | | |"
        )
    else:
        lines.append(f"| floor | {floor.get('skipped', 'not measured')} | | | | " + " | " * 4 + "|")
    if trl_s is not None:
        lines.append(
            f"| TRL GRPOTrainer (HF generate) | {_f(trl_s)} | "
            f"{_x(_ratio(trl_s, s['floor_s_per_step']))} | 1.00x | | | | | | |"
        )
    else:
        why = trl.get("skipped") or (trl.get("error", "").strip().splitlines() or ["?"])[-1]
        lines.append(f"| TRL GRPOTrainer | {why} | | | | | | | | |")
    lines.append("")
    if floor.get("policy_step_fp32_s") is not None:
        bf16 = (
            f", bf16 autocast {_f(floor['policy_step_bf16_s'])} s"
            if "policy_step_bf16_s" in floor
            else ""
        )
        best = ", ".join(
            f"{k.removesuffix('_min_s')} {_f(v)}" for k, v in floor.items() if k.endswith("_min_s")
        )
        lines.append(
            f"floor = bare vLLM generation {_f(floor.get('generation_s'))} s + reference forward "
            f"{_f(floor['reference_forward_s'])} s + policy forward/backward/AdamW "
            f"(fp32 {_f(floor['policy_step_fp32_s'])} s{bf16}) x {a['epochs']} epoch(s), medians "
            f"(best runs: {best or '—'}) on the "
            f"trained batch ({floor['rows']:.0f} rows, {floor['tokens']:.0f} tokens), "
            f"policy threads {floor.get('policy_threads')}, reference threads "
            f"{floor.get('ref_threads')}"
        )
    if trl.get("completion_length_mean") is not None:
        lines.append(f"TRL mean completion length: {trl['completion_length_mean']:.0f} tokens")
    for arm in a.get("arms", []):
        if _ran(arm) and arm.get("peak_memory"):
            lines.append(
                f"peak RSS MB, off_policy_steps={arm['off_policy_steps']}: "
                + _memory_line(arm["peak_memory"])
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The human report: the machine state, then one table per anchor."""
    m0, m1 = result.get("machine_start", {}), result.get("machine_end", {})
    lines = [
        f"# rlpost bench ({result.get('device', '?')})",
        "",
        f"commit {result.get('commit', '?')}; {m0.get('cpu_count', '?')} CPUs; "
        f"load average (1/5/15 min) {m0.get('loadavg', '?')} at start "
        f"({m0.get('time_utc', '?')}), {m1.get('loadavg', '?')} at end "
        f"({m1.get('time_utc', '?')}); steps timed after one warm-up step: "
        f"{result.get('steps', '?')}",
        "",
    ]
    for name, a in result["anchors"].items():
        lines += _anchor_md(name, a) + [""]
    return "\n".join(lines).rstrip() + "\n"
