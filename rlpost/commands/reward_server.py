"""`rlpost reward-server`: serve reward functions or a reward-model ensemble over HTTP
(POST /score, OpenRLHF's POST /get_reward, GET /health). The app itself is rewards/server.py."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from rewards.pipeline import RewardPipeline
from rewards.server import DEFAULT_MAX_BODY, create_app
from rlpost.config import config_from_dict, parse_override


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rlpost reward-server``."""
    p = subparsers.add_parser(
        "reward-server",
        help="serve reward functions or a reward-model ensemble over HTTP",
        description="Serve rewards over HTTP: POST /score, POST /get_reward (OpenRLHF), "
        "GET /health.",
    )
    p.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="SPEC",
        help="reward function (repeatable): name, file.py:fn, pkg.mod:fn, task:NAME",
    )
    p.add_argument(
        "--rm",
        action="append",
        default=[],
        metavar="DIR",
        help="reward-model dir (repeatable: several make an ensemble)",
    )
    p.add_argument("--ensemble", choices=["mean", "wco", "uwo"], default="mean")
    p.add_argument("--uwo-lambda", type=float, default=1.0)
    p.add_argument("--normalize", choices=["none", "running", "calibration"], default="running")
    p.add_argument("--calibration", default="", help="jsonl of prompt/completion rows")
    p.add_argument("--weights", default="", help="comma-separated weight per source")
    p.add_argument("--style", choices=["auto", "trl", "verl", "openrlhf"], default="auto")
    p.add_argument("--answer-key", default="answer", help="column holding the reference answer")
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--on-error", choices=["fail", "drop", "zero"], default="fail")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY / 2**20)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local only)")
    p.add_argument(
        "--token",
        default=os.environ.get("RLPOST_REWARD_TOKEN", ""),
        help="require 'Authorization: Bearer TOKEN' (default: $RLPOST_REWARD_TOKEN)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--set", action="append", default=[], metavar="reward.KEY=VALUE",
                   help="any other reward.* config override")  # fmt: skip
    p.set_defaults(func=serve)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    reward: dict[str, Any] = {
        "functions": list(args.reward),
        "models": list(args.rm),
        "ensemble": {
            "mode": args.ensemble,
            "uwo_lambda": args.uwo_lambda,
            "normalize": args.normalize,
            "calibration": args.calibration,
        },
        "weights": [float(w) for w in args.weights.split(",") if w.strip()],
        "style": args.style,
        "timeout_s": args.timeout_s,
        "on_error": args.on_error,
        "workers": args.workers,
    }
    tree: dict[str, Any] = {"reward": reward, "data": {"answer_key": args.answer_key}}
    for item in args.set:
        key, value = parse_override(item)
        parts = key.split(".")
        if parts[0] != "reward" or len(parts) < 2:
            raise ValueError(f"--set {item}: only reward.* keys apply to the reward server")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(tree)


def serve(args: argparse.Namespace) -> int:
    """Handler of ``rlpost reward-server``: blocks until interrupted."""
    import uvicorn  # heavy: only the running server needs it

    try:
        cfg = config_from_args(args)
        if not (cfg.reward.functions or cfg.reward.models):
            raise ValueError("give at least one --reward SPEC or --rm DIR")
        pipe = RewardPipeline(cfg)
    except (ValueError, KeyError, FileNotFoundError, AttributeError, OSError) as e:
        print(f"rlpost reward-server: {e}", file=sys.stderr)
        return 2

    def stop(*_: Any) -> None:
        raise _Stop

    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn them into a clean return
    # so the reward workers are stopped and the exit code is 0.
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        max_body = int(args.max_body_mb * 2**20)
        app = create_app(pipe.score, max_body, info={"sources": pipe.names}, token=args.token)
        print(f"serving rewards {pipe.names} on http://{args.host}:{args.port}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old)
        pipe.close()
    return 0


class _Stop(Exception):
    pass
