"""Atomic checkpoints (write a temp dir, then rename) and exact resume.

A checkpoint holds the DeepSpeed state of every learner group, and ``state.pt`` with the step,
policy version, sampler position, algorithm state (KL controller …) and RNG states. Everything is
written under ``.tmp-step-K``, flushed to disk, listed in ``COMPLETE`` (every file with its size),
and only then renamed to ``step-K``; ``latest`` is replaced atomically after the rename. A writer
killed at any point leaves either the previous checkpoint or the new one, never a half one:
:func:`latest` takes the newest ``step-K`` whose ``COMPLETE`` matches its files and says which
incomplete ones it skipped.

Every piece lands in ``trainer.output_dir``: learner ranks write their shards there from their
own nodes, so with more than one node that directory must be shared storage;
:func:`check_shared_storage` checks it at start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlpost.config import ConfigError
from rlpost.runtime import fault
from rlpost.tracking import write_text_atomic

log = logging.getLogger("rlpost")
COMPLETE = "COMPLETE"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    fault.kill_self_during_save(step)  # test hook: a no-op unless RLPOST_FAULT_INJECT asks
    files = _files(tmp)
    for rel in files:  # on disk before the rename makes the checkpoint visible
        _fsync(tmp / rel)
    (tmp / COMPLETE).write_text(json.dumps({"step": step, "files": files}, indent=0))
    _fsync(tmp / COMPLETE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = ckpt_root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, ckpt_root / "latest")
    _fsync(ckpt_root)
    done = sorted((p for p in ckpt_root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def incomplete_reason(path: Path) -> str:
    """Why ``path`` is not a whole checkpoint ('' when it is)."""
    marker = path / COMPLETE
    if not marker.exists():
        return f"no {COMPLETE} marker (the writer stopped mid-save)"
    try:
        want = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable {COMPLETE} marker ({e})"
    have = _files(path)
    missing = sorted(set(want) - set(have))
    if missing:
        return f"{len(missing)} files missing, e.g. {missing[0]}"
    short = [f for f, size in want.items() if have[f] != size]
    return f"{len(short)} files of the wrong size, e.g. {short[0]}" if short else ""


def latest(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (and leftover temp dirs) are skipped with
    a warning naming them."""
    if not ckpt_root.exists():
        return None
    dirs = [p for p in ckpt_root.glob("*step-*") if p.is_dir()]
    for p in sorted(dirs, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True):
        why = "a temp dir never renamed" if p.name.startswith(".tmp") else incomplete_reason(p)
        if not why:
            return p
        log.warning("skipping incomplete checkpoint %s: %s", p, why)
    return None


def load(path: Path, groups: dict[str, Any]) -> dict[str, Any]:
    for name, group in groups.items():
        group.load(str(path / name))
    state = torch.load(path / "state.pt", weights_only=False)
    set_rng_state(state["rng"])
    return state


def set_aside_metrics(run_dir: Path, step: int) -> int:
    """Rows after ``step`` in metrics.jsonl belong to steps that are being redone (a rewind or a
    resume): they move to metrics.undone.jsonl, so metrics.jsonl has each step once."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln)["step"] <= step]
    undone = [ln for ln in lines if json.loads(ln)["step"] > step]
    if undone:
        with (run_dir / "metrics.undone.jsonl").open("a") as f:
            f.write("\n".join(undone) + "\n")
        write_text_atomic(path, "".join(ln + "\n" for ln in keep))
        log.info(
            "metrics.jsonl: %d rows after step %d moved to metrics.undone.jsonl", len(undone), step
        )
    return len(undone)


def check_shared_storage(run_dir: Path, timeout_s: float = 120.0) -> None:
    """With more than one Ray node, every node must see ``run_dir`` (learner shards are written
    from each rank's node): a task pinned to each node reads a marker the driver wrote and writes
    one back. Raises one clear error otherwise."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = run_dir / f".shared-check-{token}"
    marker.write_text(token)

    @ray.remote(num_cpus=0)
    def probe(path: str, token: str, node: str) -> str:
        p = Path(path)
        if not p.exists() or p.read_text() != token:
            return f"cannot read {path}"
        (p.parent / f"{p.name}.{node}").write_text(token)
        return ""

    try:
        refs = {
            n["NodeManagerAddress"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker), token, n["NodeID"])
            for n in nodes
        }
        bad = {
            addr: err for addr, err in zip(refs, ray.get(list(refs.values()), timeout=timeout_s))
        }
        bad = {a: e for a, e in bad.items() if e}
        back = [n for n in nodes if not (run_dir / f"{marker.name}.{n['NodeID']}").exists()]
        if bad or back:
            who = ", ".join(sorted(set(bad) | {n["NodeManagerAddress"] for n in back}))
            raise ConfigError(
                f"trainer.output_dir: {run_dir} is not shared storage: node(s) {who} cannot "
                f"read/write the marker the driver wrote (learner shards, optimizer state and the "
                f"driver's state must land in one directory; use a shared filesystem)"
            )
    finally:
        for p in run_dir.glob(f"{marker.name}*"):
            p.unlink(missing_ok=True)
