"""``rlpost submit | jobs | plan | launch``: getting a run onto a cluster.

``add_cli(subparsers)`` registers the commands on the main ``rlpost`` parser; each handler is
``func(args) -> int`` (0 ok, 1 the job or the cluster failed, 2 a config / plan problem).
``python -m rlpost.commands.launch ...`` runs these commands without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algorithms.base import build_algorithm
from rlpost import preflight, resources
from rlpost.commands.launch import kuberay, slurm
from rlpost.commands.launch import submit as sub
from rlpost.config import Config, ConfigError, load_config
from rlpost.runtime import placement as pl
from rlpost.runtime.placement import (
    Node,
    PlacementError,
    Plan,
    check_fits,
    cluster_nodes,
    default_groups,
    make_plan,
)


def plan_for(cfg: Config) -> Plan:
    """The resource plan of a run: the groups its algorithm's ``Needs`` call for."""
    return make_plan(cfg, default_groups(cfg, build_algorithm(cfg).needs()))


Handler = Callable[[argparse.Namespace], int]


def _guard(name: str) -> Callable[[Handler], Handler]:
    """One-line errors: ConfigError (incl. PlacementError) -> 2, unreachable cluster -> 1."""

    def deco(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except ConfigError as e:
                print(f"rlpost {name}: {e}", file=sys.stderr)
                return 2
            except ConnectionError as e:
                print(f"rlpost {name}: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(f"rlpost {name}: interrupted", file=sys.stderr)
                return 130

        return run

    return deco


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag}: '{item}' must look like NAME=VALUE")
        out[key] = value
    return out


def _address(args: argparse.Namespace) -> str | None:
    return args.address or os.environ.get("RAY_ADDRESS") or None


def _recipe(args: argparse.Namespace) -> Config:
    return load_config(
        str(resources.find(args.recipe, "recipe")), args.overrides, validate_paths=False
    )


def _preflight(cfg: Config) -> None:
    """Reward specs, algorithm file and data files, checked here before anything is shipped."""
    try:
        preflight.check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{e} [--no-check skips this]") from e


# ------------------------------------------------------------------------------ submit / jobs


@_guard("submit")
def cmd_submit(args: argparse.Namespace) -> int:

    env = _kv(args.env, "--env")
    excludes = None if not args.exclude else sub.DEFAULT_EXCLUDES + list(args.exclude)
    if args.entrypoint:
        if args.recipe:
            raise ConfigError("submit: give a RECIPE or --entrypoint, not both")
        job = sub.build_command_job(
            args.entrypoint, args.working_dir, env_vars=env, excludes=excludes
        )
    else:
        if not args.recipe:
            raise ConfigError("submit: RECIPE is required (or --entrypoint CMD)")
        command = "compare" if args.compare else "train"
        if command == "train":
            args.recipe = str(resources.find(args.recipe, "recipe"))
        if command == "train" and args.check:
            _preflight(_recipe(args))
            _check_remote(_recipe(args), _address(args))
        job = sub.build_train_job(
            args.recipe,
            args.overrides,
            args.working_dir,
            command=command,
            rlpost_cmd=args.rlpost_cmd,
            env_vars=env,
            excludes=excludes,
        )
    for key, value in job.rewritten.items():
        print(f"rlpost submit: {key} -> {value} (shipped with the job)", file=sys.stderr)
    kw: dict[str, Any] = {}
    if args.entrypoint_num_cpus is not None:
        kw["entrypoint_num_cpus"] = args.entrypoint_num_cpus
    if args.entrypoint_num_gpus is not None:
        kw["entrypoint_num_gpus"] = args.entrypoint_num_gpus
    address = _address(args)
    job_id = sub.submit(address, job, submission_id=args.submission_id, **kw)
    print(f"submitted {job_id}: {job.entrypoint}", flush=True)
    if args.no_wait:
        flag = f" --address {args.address}" if args.address else ""
        print(f"follow: rlpost jobs logs {job_id} --follow{flag}")
        print(f"stop:   rlpost jobs stop {job_id}{flag}")
        return 0
    status = sub.follow(address, job_id)
    print(f"job {job_id} {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _check_remote(cfg: Config, address: str | None) -> None:
    """Refuse a plan the target cluster cannot hold before uploading anything."""

    plan = plan_for(cfg)
    try:
        nodes = cluster_nodes(address)
    except PlacementError as e:
        print(f"rlpost submit: plan not checked ({e}); --no-check skips this", file=sys.stderr)
        return
    check_fits(plan, nodes=nodes)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


@_guard("jobs")
def cmd_jobs(args: argparse.Namespace) -> int:

    address = _address(args)
    if args.action == "list":
        rows = [["id", "status", "started", "entrypoint"]]
        for j in sub.list_jobs(address):
            ep = j["entrypoint"] if len(j["entrypoint"]) <= 70 else j["entrypoint"][:67] + "..."
            rows.append([j["id"], j["status"], _when(j["start"]), ep])
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return 0
    if not args.job_id:
        raise ConfigError(f"jobs {args.action}: a job id is required")
    if args.action == "logs":
        if args.follow:
            status = sub.follow(address, args.job_id)
            print(f"job {args.job_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(sub.logs(address, args.job_id))
        return 0
    if args.action == "status":
        info = sub.status(address, args.job_id)
        print(f"{info['id']} {info['status']} {info['message']}".rstrip())
        return 0 if info["status"] != "FAILED" else 1
    stopped = sub.stop(address, args.job_id)
    status = sub.wait(address, args.job_id, timeout_s=60) if stopped else "already finished"
    print(f"job {args.job_id}: stop requested, now {status}")
    return 0


# ------------------------------------------------------------------------------ plan


@_guard("plan")
def cmd_plan(args: argparse.Namespace) -> int:

    cfg = _recipe(args)
    plan = plan_for(cfg)
    address = _address(args) or cfg.placement.ray_address or None
    if args.cluster and args.node:
        raise ConfigError("plan: give --cluster or --node, not both")
    if args.cluster:
        nodes, source = pl.parse_cluster_spec(args.cluster), f"--cluster {args.cluster}"
    elif args.node:
        nodes = [pl.parse_node_spec(s, i) for i, s in enumerate(args.node)]
        source = f"{len(nodes)} --node spec(s)"
    elif address:
        try:
            nodes = pl.cluster_nodes(address)
        except pl.PlacementError as e:
            raise ConnectionError(str(e)) from e
        source = f"the Ray cluster at {address}"
    else:
        nodes, source = pl.local_nodes(cfg.placement.num_cpus), "this machine"
    print(f"cluster: {source}")
    for n in nodes:
        print(f"  {pl._node_label(nodes, n)}: {pl._fmt(n.resources)}")
    print(pl.describe(plan, nodes=nodes))
    pl.check_fits(plan, nodes=nodes)
    print("fits: yes")
    return 0


# ------------------------------------------------------------------------------ launch


def _check_launch(cfg: Config, nodes: list[Any], what: str) -> None:

    plan = plan_for(cfg)
    try:
        pl.check_fits(plan, nodes=nodes)
    except pl.PlacementError as e:
        raise pl.PlacementError(f"{e} [cluster described by {what}; --no-check skips this]") from e


def _write(text: str, out: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


@_guard("launch slurm")
def cmd_launch_slurm(args: argparse.Namespace) -> int:

    if args.check and not args.compare:
        cfg = _recipe(args)
        _preflight(cfg)
        cpus = float(args.cpus_per_node) if args.cpus_per_node else float("inf")
        nodes = [
            Node(
                "",
                f"node{i}",
                {"CPU": cpus, "GPU": float(args.gpus_per_node), f"rlpost_node_{i}": 1000.0},
            )
            for i in range(args.nodes)
        ]
        _check_launch(cfg, nodes, f"--nodes {args.nodes} --gpus-per-node {args.gpus_per_node}")
    job = slurm.SlurmJob(
        recipe=args.recipe,
        overrides=list(args.overrides),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_node=args.cpus_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
        job_name=args.job_name,
        output=args.output,
        chdir=args.chdir,
        setup=list(args.setup or []),
        ray_port=args.ray_port,
        dashboard_port=args.dashboard_port,
        rlpost_cmd=args.rlpost_cmd,
        command="compare" if args.compare else "train",
    )
    _write(slurm.render(job), args.out)
    if args.out != "-":
        print(f"submit with: sbatch {args.out}", file=sys.stderr)
    return 0


@_guard("launch kuberay")
def cmd_launch_kuberay(args: argparse.Namespace) -> int:

    res = {k: float(v) for k, v in _kv(args.worker_resource, "--worker-resource").items()}
    if args.check and not args.compare:
        cfg = _recipe(args)
        _preflight(cfg)
        head_cpus = 0.0 if args.workers else float(args.head_cpus)
        nodes = [Node("", "head", {"CPU": head_cpus})] + [
            Node(
                "",
                f"worker{i}",
                {"CPU": float(args.cpus_per_worker), "GPU": float(args.gpus_per_worker), **res},
            )
            for i in range(args.workers)
        ]
        _check_launch(
            cfg, nodes, f"--workers {args.workers} --gpus-per-worker {args.gpus_per_worker}"
        )
    job = kuberay.KubeRayJob(
        recipe=args.recipe,
        image=args.image,
        overrides=list(args.overrides),
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        memory_per_worker=args.memory_per_worker,
        head_cpus=args.head_cpus,
        head_memory=args.head_memory,
        name=args.name,
        namespace=args.namespace,
        worker_resources=res,
        working_dir_uri=args.working_dir_uri,
        rlpost_cmd=args.rlpost_cmd,
        command="compare" if args.compare else "train",
    )
    manifest = kuberay.build(job)
    kuberay.validate(manifest)
    _write(kuberay.dump(manifest), args.out)
    if args.out != "-":
        print(f"submit with: kubectl apply -f {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ wiring


def _recipe_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "recipe", nargs=None if required else "?", help="recipe YAML (launch/recipes/...)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.steps=2")


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)",
    )


def add_cli(subparsers: Any) -> None:
    """Register submit, jobs, plan and launch on the main parser's subparsers."""
    p = subparsers.add_parser("submit", help="run a recipe on a Ray cluster (Ray Jobs API)")
    _recipe_args(p, required=False)
    _address_arg(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--working-dir", default=".", help="directory shipped as the job's cwd")
    p.add_argument("--compare", action="store_true", help="RECIPE is a compare config")
    p.add_argument("--entrypoint", default="", help="run this shell command instead of a recipe")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the job (repeat)")
    p.add_argument("--exclude", action="append", default=[], help="extra upload exclude pattern")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the plan check")
    p.add_argument("--rlpost-cmd", default="rlpost", help="how the job invokes rlpost")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--entrypoint-num-gpus", type=float, default=None)
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("jobs", help="list, follow, stop Ray jobs")
    p.add_argument("action", choices=["list", "logs", "status", "stop"])
    p.add_argument("job_id", nargs="?", default="")
    _address_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(func=cmd_jobs)

    p = subparsers.add_parser("plan", help="dry run: which actor lands where; refuse misfits")
    _recipe_args(p)
    _address_arg(p)
    p.add_argument("--cluster", default="", help='totals, e.g. "cpus=16,gpus=8,nodes=2"')
    p.add_argument(
        "--node", action="append", default=[], help='one node, e.g. "CPU=8,GPU=4,rlpost_node_1=1"'
    )
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser("launch", help="write a SLURM script or a KubeRay RayJob")
    sub = p.add_subparsers(dest="target", required=True)

    s = sub.add_parser("slurm", help="sbatch script: Ray head + workers, then rlpost train")
    _recipe_args(s)
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--gpus-per-node", type=int, default=0)
    s.add_argument("--cpus-per-node", type=int, default=0, help="0: all the node's cores")
    s.add_argument("--partition", default="")
    s.add_argument("--time", default="", help="e.g. 04:00:00")
    s.add_argument("--account", default="")
    s.add_argument("--job-name", default="rlpost")
    s.add_argument("--output", default="rlpost-%j.out", help="SLURM log file pattern")
    s.add_argument("--chdir", default="", help="job working directory (default: sbatch's cwd)")
    s.add_argument(
        "--setup", action="append", help="shell line run first (repeat), e.g. module load"
    )
    s.add_argument("--ray-port", type=int, default=6379)
    s.add_argument("--dashboard-port", type=int, default=8265)
    s.add_argument("--compare", action="store_true", help="RECIPE is a compare config")
    s.add_argument("--rlpost-cmd", default="rlpost")
    s.add_argument("--no-check", dest="check", action="store_false", help="skip the plan check")
    s.add_argument("--out", default="-", help="output file (default: stdout)")
    s.set_defaults(func=cmd_launch_slurm)

    k = sub.add_parser("kuberay", help="RayJob manifest for KubeRay (ray.io/v1)")
    _recipe_args(k)
    k.add_argument("--image", required=True, help="container image with rlpost installed")
    k.add_argument("--workers", type=int, default=1)
    k.add_argument("--gpus-per-worker", type=int, default=0)
    k.add_argument("--cpus-per-worker", type=int, default=8)
    k.add_argument("--memory-per-worker", default="32Gi")
    k.add_argument("--head-cpus", type=int, default=4)
    k.add_argument("--head-memory", default="16Gi")
    k.add_argument("--name", default="", help="RayJob name (default: from the recipe)")
    k.add_argument("--namespace", default="")
    k.add_argument(
        "--worker-resource", action="append", default=[], help="custom Ray resource NAME=AMOUNT"
    )
    k.add_argument("--working-dir-uri", default="", help="runtime_env working_dir (remote zip)")
    k.add_argument("--compare", action="store_true", help="RECIPE is a compare config")
    k.add_argument("--rlpost-cmd", default="rlpost")
    k.add_argument("--no-check", dest="check", action="store_false", help="skip the plan check")
    k.add_argument("--out", default="-", help="output file (default: stdout)")
    k.set_defaults(func=cmd_launch_kuberay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlpost", description=__doc__.splitlines()[0])
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
