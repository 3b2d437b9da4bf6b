"""What the bench records about the machine and the actors, beside the timings: load average,
CPU count, commit, and each actor's peak memory.

Peak memory is read from outside the actors, so no runtime class needs a method for it: Ray's
GCS actor table gives each live actor's pid, and on the machine running the bench the kernel
keeps every process's RSS high-water mark (``VmHWM`` in /proc/PID/status). Child processes
(vLLM's engine core runs in one) are added up separately. Actors on other nodes are listed
without figures.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import ray


def _hwm_mb(pid: int) -> float | None:
    """RSS high-water mark of one process in MB, None when it is gone or not ours to read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_peak_mb(pid: int) -> dict[str, float | None]:
    """The process's own peak RSS and the sum of its live children's peaks (MB)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    child_peaks = [m for m in (_hwm_mb(k.pid) for k in kids) if m is not None]
    return {"self_mb": _hwm_mb(pid), "children_mb": sum(child_peaks) if child_peaks else 0.0}


def actor_peak_memory() -> list[dict[str, Any]]:
    """Per live actor of this job: class, pid and peak RSS (self, children), plus the driver's
    own ``ru_maxrss`` (the whole bench process so far). Call before the actors are shut down."""
    job = ray.get_runtime_context().get_job_id()
    rows = []
    for info in ray._private.state.actors().values():  # GCS table; no dashboard needed
        if info.get("State") != "ALIVE" or info.get("JobID") != job:
            continue
        pid = int(info.get("Pid") or 0)
        row: dict[str, Any] = {"actor": info.get("ActorClassName", "?"), "pid": pid}
        row.update(process_peak_mb(pid) if pid else {"self_mb": None, "children_mb": 0.0})
        rows.append(row)
    rows.sort(key=lambda r: (r["actor"], r["pid"]))
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    rows.append(
        {
            "actor": "driver (bench process)",
            "pid": os.getpid(),
            "self_mb": driver,
            "children_mb": 0.0,
        }
    )
    return rows


def commit_hash(repo: Path) -> str:
    """HEAD of the checkout the bench runs from (``+dirty`` with uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_state() -> dict[str, Any]:
    """Load average (1, 5, 15 min), CPU count and wall-clock time: the context of a figure."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
