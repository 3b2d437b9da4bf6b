"""``rlpost reward-server``: serve reward functions or a reward-model ensemble over HTTP.

``POST /score`` takes ``{"prompts": [...], "completions": [...], "columns": {...}, "step": 0}`` and
answers ``{"scores": [...], "metrics": {...}}``; ``GET /health`` says what it serves. Bodies
over the size limit get 413 (checked while reading, so a huge body is never buffered), malformed
ones 422, a reward failure under ``on_error=fail`` 500 with the message. Scoring goes through
:class:`RewardPipeline`, so the server has the same isolation, timeouts and error policy as
training.
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` class on the
# endpoint, which is imported lazily inside create_app (keeps ``rlpost --help`` fast).
import argparse
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_BODY = 16 * 1024 * 1024

ScoreFn = Callable[[list, list, dict, int], tuple[list, dict]]


def _problem(body: Any) -> str | None:
    """What is wrong with a /score body, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object with 'prompts' and 'completions'"
    prompts, completions = body.get("prompts"), body.get("completions")
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        return "'completions' must be a list of strings"
    if not isinstance(prompts, list) or len(prompts) != len(completions):
        return f"'prompts' must be a list as long as 'completions' ({len(completions)})"
    columns = body.get("columns", {})
    if not isinstance(columns, dict):
        return "'columns' must be an object of lists"
    for k, v in columns.items():
        if not isinstance(v, list) or len(v) != len(completions):
            return f"column '{k}' must be a list of {len(completions)} values"
    step = body.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int):
        return "'step' must be an integer"
    return None


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {
        k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
        for k, v in metrics.items()
    }


def create_app(
    score: ScoreFn, max_body_bytes: int = DEFAULT_MAX_BODY, info: dict | None = None
) -> Any:
    """A FastAPI app around ``score(prompts, completions, columns, step) -> (scores, metrics)``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from rewards.base import RewardError

    app = FastAPI(title="rlpost reward server")
    about = {"status": "ok", "max_body_bytes": max_body_bytes, **(info or {})}

    @app.get("/health")
    def health() -> dict:
        return about

    @app.post("/score")
    async def score_endpoint(request: Request) -> Any:
        too_big = JSONResponse(
            {"detail": f"request body over the {max_body_bytes}-byte limit"}, status_code=413
        )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return too_big
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                return too_big
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return JSONResponse({"detail": f"body is not JSON: {e}"}, status_code=422)
        problem = _problem(body)
        if problem:
            return JSONResponse({"detail": problem}, status_code=422)
        try:
            scores, metrics = await run_in_threadpool(
                score,
                body["prompts"],
                body["completions"],
                body.get("columns", {}),
                body.get("step", 0),
            )
        except RewardError as e:
            return JSONResponse({"detail": str(e), "kind": e.kind}, status_code=500)
        return {"scores": scores, "metrics": _finite(metrics)}

    return app


class ServerHandle:
    """uvicorn serving ``app`` in a background thread on an already-bound socket (no port race)."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ):
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name="reward-server"
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"reward server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_thread(
    cfg: Any, host: str = "127.0.0.1", port: int = 0, **kw: Any
) -> tuple[ServerHandle, Any]:
    """Start a server for ``cfg.reward`` in this process (tests, notebooks): (handle, pipeline)."""
    from rewards.pipeline import RewardPipeline

    pipe = RewardPipeline(cfg)
    app = create_app(pipe.score, info={"sources": pipe.names}, **kw)
    return ServerHandle(app, host, port), pipe


# ------------------------------------------------------------------------------ CLI


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rlpost reward-server``."""
    p = subparsers.add_parser(
        "reward-server",
        help="serve reward functions or a reward-model ensemble over HTTP",
        description="Serve rewards over HTTP: POST /score, GET /health.",
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
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--set", action="append", default=[], metavar="reward.KEY=VALUE",
                   help="any other reward.* config override")  # fmt: skip
    p.set_defaults(func=serve)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    from rlpost.config import config_from_dict, parse_override

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
    import uvicorn

    from rewards.pipeline import RewardPipeline

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
        app = create_app(pipe.score, max_body, info={"sources": pipe.names})
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
