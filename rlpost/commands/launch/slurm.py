"""``rlpost launch slurm``: render launch/slurm/rlpost.sbatch.in into a ready sbatch script."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from rlpost import resources
from rlpost.config import ConfigError

TEMPLATE = resources.launch_file("slurm", "rlpost.sbatch.in")
_TOKEN = re.compile(r"@([A-Z_]+)@")
_SAFE = re.compile(r"^[A-Za-z0-9_.:,/%=+\-]+$")  # values allowed on an #SBATCH line


@dataclass
class SlurmJob:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int = 0  # 0: let SLURM / Ray decide
    partition: str = ""
    time: str = ""
    account: str = ""
    job_name: str = "rlpost"
    output: str = "rlpost-%j.out"
    chdir: str = ""
    setup: list[str] = field(default_factory=list)  # shell lines run before Ray starts
    ray_port: int = 6379
    dashboard_port: int = 8265
    worker_timeout_s: int = 300
    rlpost_cmd: str = "rlpost"
    command: str = "train"


def _sbatch_value(key: str, value: str) -> str:
    if not _SAFE.match(value):
        raise ConfigError(f"--{key}: {value!r} has characters an #SBATCH line cannot hold")
    return value


def render(job: SlurmJob, template: Path = TEMPLATE) -> str:
    """The sbatch script text. Raises ConfigError naming the option for impossible values."""
    if job.nodes < 1:
        raise ConfigError(f"--nodes: must be >= 1, got {job.nodes}")
    if job.gpus_per_node < 0 or job.cpus_per_node < 0:
        raise ConfigError("--gpus-per-node / --cpus-per-node: must be >= 0")
    if not template.is_file():
        raise ConfigError(f"SLURM template not found: {template}")
    extra = []
    if job.gpus_per_node:
        extra.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_node:
        extra.append(f"#SBATCH --cpus-per-task={job.cpus_per_node}")
    for key in ("partition", "time", "account", "chdir"):
        value = getattr(job, key)
        if value:
            extra.append(f"#SBATCH --{key}={_sbatch_value(key, value)}")
    train = [*shlex.split(job.rlpost_cmd), job.command, job.recipe, *job.overrides]
    values = {
        "JOB_NAME": _sbatch_value("job-name", job.job_name),
        "NODES": str(job.nodes),
        "OUTPUT": _sbatch_value("output", job.output),
        "SBATCH_EXTRA": "\n".join(extra),
        "RAY_PORT": str(job.ray_port),
        "DASHBOARD_PORT": str(job.dashboard_port),
        "GPUS_PER_NODE": str(job.gpus_per_node),
        "CPUS_PER_NODE": str(job.cpus_per_node or ""),
        "WORKER_TIMEOUT_S": str(job.worker_timeout_s),
        "TRAIN_CMD": " ".join(shlex.quote(a) for a in train),
        "SETUP": "\n".join(job.setup) if job.setup else "# (no --setup lines)",
    }
    text = template.read_text()
    missing = sorted(set(_TOKEN.findall(text)) - set(values))
    if missing:
        raise ConfigError(f"{template}: unknown placeholder(s) {', '.join(missing)}")
    return _TOKEN.sub(lambda m: values[m.group(1)], text)
