"""``rlpost launch kuberay``: a RayJob manifest (KubeRay, apiVersion ray.io/v1), schema-checked.

The manifest is built from launch/kuberay/rayjob.template.yaml and validated against the
vendored CRD launch/kuberay/ray.io_rayjobs.yaml before it is written. ``strict`` validation also
rejects fields the CRD does not define (Kubernetes would silently prune them, so a typo such as
``shutdownAfterJobFinish`` would otherwise vanish without a word).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from rlpost import resources
from rlpost.config import ConfigError

TEMPLATE = resources.launch_file("kuberay", "rayjob.template.yaml")
CRD = resources.launch_file("kuberay", "ray.io_rayjobs.yaml")


@dataclass
class KubeRayJob:
    recipe: str
    image: str
    overrides: list[str] = field(default_factory=list)
    workers: int = 1
    gpus_per_worker: int = 0
    cpus_per_worker: int = 8
    memory_per_worker: str = "32Gi"
    head_cpus: int = 4
    head_memory: str = "16Gi"
    name: str = ""
    namespace: str = ""
    ray_version: str = ""  # empty: the installed ray's version
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    working_dir_uri: str = ""  # e.g. s3://bucket/code.zip; empty: the code is in the image
    ttl_s: int = 600
    shm_size: str = "8Gi"  # /dev/shm for vLLM / NCCL / the object store
    rlpost_cmd: str = "rlpost"
    command: str = "train"


def job_name(recipe: str) -> str:
    """A DNS-1123 name from the recipe file name (KubeRay derives pod names from it)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(recipe).stem.lower()).strip("-")
    return ("rlpost-" + stem)[:40].rstrip("-") if stem else "rlpost"


def _quantity(key: str, value: str) -> str:
    if not re.match(r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$", value):
        raise ConfigError(f"--{key}: {value!r} is not a Kubernetes quantity (e.g. 32Gi)")
    return value


def build(job: KubeRayJob) -> dict[str, Any]:
    """The RayJob as a dict. Raises ConfigError naming the option for impossible values."""
    if not job.image:
        raise ConfigError("--image: required (a container image with rlpost installed)")
    if job.workers < 0 or job.gpus_per_worker < 0 or job.cpus_per_worker < 1:
        raise ConfigError("--workers/--gpus-per-worker must be >= 0, --cpus-per-worker >= 1")
    m = yaml.safe_load(TEMPLATE.read_text())
    spec = m["spec"]
    m["metadata"]["name"] = job.name or job_name(job.recipe)
    if job.namespace:
        m["metadata"]["namespace"] = job.namespace
    words = [*shlex.split(job.rlpost_cmd), job.command, job.recipe, *job.overrides]
    spec["entrypoint"] = " ".join(shlex.quote(w) for w in words)
    spec["ttlSecondsAfterFinished"] = job.ttl_s
    if job.working_dir_uri:
        spec["runtimeEnvYAML"] = yaml.safe_dump({"working_dir": job.working_dir_uri})
    cluster = spec["rayClusterSpec"]
    cluster["rayVersion"] = job.ray_version or metadata.version("ray")
    head = cluster["headGroupSpec"]
    head_c = head["template"]["spec"]["containers"][0]
    head_c["image"] = job.image
    head_res = {"cpu": str(job.head_cpus), "memory": _quantity("head-memory", job.head_memory)}
    head_c["resources"] = {"limits": dict(head_res), "requests": dict(head_res)}
    if job.workers:
        head["rayStartParams"]["num-cpus"] = "0"  # actors go to the workers; the driver stays
    group = cluster["workerGroupSpecs"][0]
    group.update(replicas=job.workers, minReplicas=job.workers, maxReplicas=job.workers)
    params: dict[str, str] = {}
    if job.worker_resources:
        # KubeRay passes this string to `ray start --resources=...` verbatim (quoted JSON).
        params["resources"] = json.dumps(json.dumps(job.worker_resources))
    group["rayStartParams"] = params
    worker_c = group["template"]["spec"]["containers"][0]
    worker_c["image"] = job.image
    res: dict[str, Any] = {
        "cpu": str(job.cpus_per_worker),
        "memory": _quantity("memory-per-worker", job.memory_per_worker),
    }
    if job.gpus_per_worker:
        res["nvidia.com/gpu"] = job.gpus_per_worker
    worker_c["resources"] = {"limits": dict(res), "requests": dict(res)}
    for pod in (head["template"]["spec"], group["template"]["spec"]):
        size = _quantity("shm-size", job.shm_size)
        pod["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}]
        pod["containers"][0]["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if not job.workers:
        cluster["workerGroupSpecs"] = []
    return m


@lru_cache(maxsize=2)
def load_crd(crd: Path = CRD) -> dict[str, Any]:
    """The CRD document (25k lines: parsed once, with libyaml when available)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(crd.read_text(), Loader=loader)  # noqa: S506 - a safe loader


@lru_cache(maxsize=4)
def _schema(crd: Path, version: str, strict: bool) -> dict[str, Any]:
    for v in load_crd(crd)["spec"]["versions"]:
        if v["name"] == version:
            schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
            return _closed(schema) if strict else schema
    raise ConfigError(f"{crd}: no version {version} in the CRD")


def _closed(s: Any) -> Any:
    """Forbid undeclared fields where Kubernetes would prune them (a structural schema)."""
    if isinstance(s, dict):
        for v in s.values():
            _closed(v)
        if (
            "properties" in s
            and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
        ):
            s["additionalProperties"] = False
    elif isinstance(s, list):
        for v in s:
            _closed(v)
    return s


def validation_errors(manifest: dict[str, Any], strict: bool = True, crd: Path = CRD) -> list[str]:
    """Schema violations as 'path: message' lines (empty: valid)."""
    import jsonschema  # only validation needs it (a slow import for every other command)

    api = str(manifest.get("apiVersion", ""))
    version = api.split("/", 1)[1] if api.startswith("ray.io/") else ""
    if not version or manifest.get("kind") != "RayJob":
        return [
            f"apiVersion/kind: expected ray.io/v1 RayJob, got {api or '?'} {manifest.get('kind')}"
        ]
    validator = jsonschema.Draft7Validator(_schema(crd, version, strict))
    out = []
    for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        where = "/".join(str(p) for p in e.path) or "(root)"
        out.append(f"{where}: {e.message}")
    return out


def validate(manifest: dict[str, Any], strict: bool = True, crd: Path = CRD) -> None:
    errors = validation_errors(manifest, strict, crd)
    if errors:
        raise ConfigError(f"RayJob manifest does not match the KubeRay CRD: {'; '.join(errors)}")


def dump(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False)
