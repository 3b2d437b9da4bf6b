"""Atomic checkpoints (write a temp dir, then rename) and exact resume.

A checkpoint holds the DeepSpeed state of every learner group, and ``state.pt`` with the step,
policy version, sampler position, algorithm state (KL controller …) and RNG states. ``latest``
is replaced atomically after the rename, so a crash mid-save never leaves a half checkpoint behind.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save(
    ckpt_root: Path, step: int, groups: dict[str, Any], state: dict[str, Any], keep: int = 2
) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, group in groups.items():
        group.save(str(tmp / name), {"step": step})
    torch.save({**state, "rng": rng_state()}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = ckpt_root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, ckpt_root / "latest")
    done = sorted((p for p in ckpt_root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_root: Path) -> Path | None:
    marker = ckpt_root / "latest"
    if not marker.exists():
        return None
    path = ckpt_root / marker.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load(path: Path, groups: dict[str, Any]) -> dict[str, Any]:
    for name, group in groups.items():
        group.load(str(path / name))
    state = torch.load(path / "state.pt", weights_only=False)
    set_rng_state(state["rng"])
    return state
