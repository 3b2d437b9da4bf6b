"""``rlpost reward-server``: serve reward functions or a reward-model ensemble over HTTP.

``POST /score`` takes ``{"prompts": [...], "completions": [...], "columns": {...}, "step": 0}`` and
answers ``{"scores": [...], "metrics": {...}}``. ``POST /get_reward`` speaks OpenRLHF's remote
reward-model protocol: ``{"query": [...], "prompts": [...], "labels": [...]}`` (queries are prompt
+ response) → ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. ``GET /health`` says
what it serves.

Abuse is answered, not suffered: bodies over the size limit get 413 (checked while reading, so a
huge body is never buffered), a body that is not JSON 400, a wrong shape 422 naming the field, a
missing or wrong bearer token (``--token`` / ``RLPOST_REWARD_TOKEN``) 401, a reward failure under
``on_error=fail`` 500 with the message. Scoring goes through :class:`RewardPipeline`, so a hung
user function times out and its worker process is replaced, exactly as in training. The server
binds 127.0.0.1 unless ``--host`` says otherwise.
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` class on the
# endpoint, which is imported lazily inside create_app (keeps ``rlpost --help`` fast).
import hmac
import json
import math
import socket
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


def _openrlhf_problem(body: Any) -> str | None:
    """What is wrong with a /get_reward body, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object with 'query'"
    query = body.get("query")
    if not isinstance(query, list) or not all(isinstance(q, str) for q in query):
        return "'query' must be a list of strings (prompt + response)"
    for key in ("prompts", "labels"):
        v = body.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != len(query)):
            return f"'{key}' must be a list as long as 'query' ({len(query)})"
    prompts = body.get("prompts")
    if prompts is not None and not all(isinstance(p, str) for p in prompts):
        return "'prompts' must be a list of strings"
    return None


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Scalar metrics only (per-row ``samples/...`` lists stay in the server)."""
    return {
        k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
        for k, v in metrics.items()
        if not isinstance(v, (list, tuple))
    }


def create_app(
    score: ScoreFn,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    info: dict | None = None,
    token: str = "",
) -> Any:
    """A FastAPI app around ``score(prompts, completions, columns, step) -> (scores, metrics)``."""
    from fastapi import FastAPI, Request  # the server only: rewards stays light to import
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from rewards.base import RewardError

    app = FastAPI(title="rlpost reward server")
    about = {"status": "ok", "max_body_bytes": max_body_bytes, **(info or {})}

    def refused(request: Request) -> Any:
        """401 without the bearer token (when one is configured)."""
        if not token:
            return None
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return None
        return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)

    async def read_json(request: Request) -> tuple[Any, Any]:
        """(body, None) or (None, the error response): 413 over the limit, 400 not JSON."""
        too_big = JSONResponse(
            {"detail": f"request body over the {max_body_bytes}-byte limit"}, status_code=413
        )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return None, too_big
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                return None, too_big
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError) as e:
            return None, JSONResponse({"detail": f"body is not JSON: {e}"}, status_code=400)

    async def run_score(prompts: list, completions: list, columns: dict, step: int) -> Any:
        try:
            return await run_in_threadpool(score, prompts, completions, columns, step), None
        except RewardError as e:
            return None, JSONResponse({"detail": str(e), "kind": e.kind}, status_code=500)

    @app.get("/health")
    def health(request: Request) -> Any:
        return refused(request) or about

    @app.post("/score")
    async def score_endpoint(request: Request) -> Any:
        if (no := refused(request)) is not None:
            return no
        body, err = await read_json(request)
        if err is not None:
            return err
        problem = _problem(body)
        if problem:
            return JSONResponse({"detail": problem}, status_code=422)
        out, err = await run_score(
            body["prompts"], body["completions"], body.get("columns", {}), body.get("step", 0)
        )
        if err is not None:
            return err
        scores, metrics = out
        return {"scores": scores, "metrics": _finite(metrics)}

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Any:
        """OpenRLHF's remote reward model: queries are prompt + response, labels the answers."""
        if (no := refused(request)) is not None:
            return no
        body, err = await read_json(request)
        if err is not None:
            return err
        problem = _openrlhf_problem(body)
        if problem:
            return JSONResponse({"detail": problem}, status_code=422)
        queries = body["query"]
        prompts = body.get("prompts") or [""] * len(queries)
        completions = [q[len(p) :] if q.startswith(p) else q for q, p in zip(queries, prompts)]
        columns = {"answer": body["labels"]} if body.get("labels") is not None else {}
        out, err = await run_score(prompts, completions, columns, 0)
        if err is not None:
            return err
        scores, metrics = out
        n = len(scores)
        logs = {
            k.removeprefix("reward/"): [v] * n for k, v in _finite(metrics).items() if v is not None
        }
        return {"rewards": scores, "scores": scores, "extra_logs": logs}

    return app


class ServerHandle:
    """uvicorn serving ``app`` in a background thread on an already-bound socket (no port race)."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ):
        import uvicorn  # the server only

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
    from rewards.pipeline import (
        RewardPipeline,  # would close an import cycle (that module imports this one)
    )

    pipe = RewardPipeline(cfg)
    app = create_app(pipe.score, info={"sources": pipe.names}, **kw)
    return ServerHandle(app, host, port), pipe
