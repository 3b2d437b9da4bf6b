"""Reward server + remote client on localhost: health, round trip, limits, batching, retries, CLI."""

import argparse
import os
import subprocess
import sys
import time

import httpx
import pytest

from rewards.base import RewardError
from rewards.pipeline import RewardPipeline
from rewards.remote import RemoteReward, RemoteRewardError
from rewards.server import ServerHandle, create_app, serve_in_thread
from rlpost.commands.reward_server import add_cli, config_from_args
from rlpost.config import Config

P = ["p0", "p1", "p2", "p3", "p4"]
C = ["4", "the answer is 5", "x", "7", "9"]
ANS = ["4", "5", "6", "8", "9"]


class Recorder:
    """A scorer that records each request and can fail the first ``fail_first`` ones."""

    def __init__(self, fail_first=0):
        self.calls = []
        self.fail_first = fail_first

    def __call__(self, prompts, completions, columns, step):
        self.calls.append((list(prompts), dict(columns), step))
        if len(self.calls) <= self.fail_first:
            raise RewardError(
                "flaky", None, "exception", "raised RuntimeError: try again", len(prompts)
            )
        scores = [
            float(c == a)
            for c, a in zip(completions, columns.get("answer", [None] * len(completions)))
        ]
        return scores, {"reward/mean": sum(scores) / max(1, len(scores))}


@pytest.fixture
def server():
    started = []

    def start(scorer, **kw):
        h = ServerHandle(create_app(scorer, **kw))
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def test_health_and_round_trip(server):
    rec = Recorder()
    h = server(rec, info={"sources": ["rec"]})
    health = httpx.get(f"{h.url}/health").json()
    assert health["status"] == "ok" and health["sources"] == ["rec"]
    r = httpx.post(
        f"{h.url}/score",
        json={"prompts": P, "completions": C, "columns": {"answer": ANS}, "step": 2},
    )
    assert r.status_code == 200
    assert r.json()["scores"] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert rec.calls[0][2] == 2


def test_limits_and_malformed_requests(server):
    h = server(Recorder(), max_body_bytes=2000)
    big = {"prompts": ["p"] * 100, "completions": ["x" * 100] * 100}
    r = httpx.post(f"{h.url}/score", json=big)
    assert r.status_code == 413 and "2000-byte limit" in r.json()["detail"]
    assert httpx.post(f"{h.url}/score", content=b"{not json").status_code == 400
    bad = httpx.post(f"{h.url}/score", json={"prompts": ["a"], "completions": ["b", "c"]})
    assert bad.status_code == 422 and "as long as 'completions'" in bad.json()["detail"]
    col = httpx.post(
        f"{h.url}/score", json={"prompts": ["a"], "completions": ["b"], "columns": {"answer": []}}
    )
    assert col.status_code == 422 and "column 'answer'" in col.json()["detail"]


def test_client_batches_and_keeps_order(server):
    rec = Recorder()
    h = server(rec)
    client = RemoteReward(h.url, batch_size=2, retries=0)
    out = client(P, C, answer=ANS, step=1)
    assert out == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert sorted(len(c[0]) for c in rec.calls) == [1, 2, 2]  # 5 rows in requests of <= 2
    assert sorted(p for c in rec.calls for p in c[0]) == P
    client.close()


def test_client_retries_a_server_that_fails_once(server):
    rec = Recorder(fail_first=1)
    h = server(rec)
    client = RemoteReward(h.url, retries=2, backoff_s=0.01)
    assert client(P, C, answer=ANS) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert len(rec.calls) == 2
    no_retry = RemoteReward(h.url, retries=0)
    rec.fail_first, rec.calls = 1, []
    with pytest.raises(RemoteRewardError, match=f"{h.url}/score: HTTP 500.*try again"):
        no_retry(P, C, answer=ANS)


def test_client_errors_name_the_url(server):
    h = server(Recorder(), max_body_bytes=100)
    with pytest.raises(RemoteRewardError, match=f"{h.url}/score: HTTP 413"):
        RemoteReward(h.url, retries=3)(P, C, answer=ANS)  # 4xx: no retry
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match="after 2 attempts.*127.0.0.1:9/score"):
        RemoteReward(dead, retries=1, backoff_s=0.01, timeout_s=2)(P, C)
    assert time.monotonic() - t0 < 10


def test_replicas_fail_over(server):
    h = server(Recorder())
    client = RemoteReward(["http://127.0.0.1:9", h.url], batch_size=2, retries=1, backoff_s=0.01)
    assert client(P, C, answer=ANS) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_pipeline_to_server_to_pipeline(spec):
    served = Config()
    served.reward.functions = [spec("contains_answer")]
    served.reward.workers = 0
    h, inner = serve_in_thread(served)
    try:
        cfg = Config()
        cfg.reward.remote = [h.url]
        cfg.reward.remote_batch_size = 2
        with RewardPipeline(cfg) as pipe:
            scores, m = pipe.score(P, C, {"answer": ANS})
        assert scores == [1.0, 1.0, 0.0, 0.0, 1.0]
        assert m["reward/remote0/mean"] == 0.6
    finally:
        h.stop()
        inner.close()


def test_remote_failure_follows_on_error():
    cfg = Config()
    cfg.reward.remote = ["http://127.0.0.1:9"]
    cfg.reward.remote_retries = 0
    cfg.reward.on_error = "drop"
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(P[:2], C[:2])
    assert scores == [None, None] and m["reward/errors/exception"] == 2
    assert "127.0.0.1:9" in str(pipe.last_errors[0])


def test_cli_parses_into_config(spec):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        ["reward-server", "--reward", spec("contains_answer"), "--rm", "/m1", "--rm", "/m2",
         "--ensemble", "uwo", "--uwo-lambda", "0.5", "--weights", "1,2", "--port", "0",
         "--set", "reward.remote_retries=5"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.reward.functions == [spec("contains_answer")] and cfg.reward.models == ["/m1", "/m2"]
    assert cfg.reward.ensemble.mode == "uwo" and cfg.reward.ensemble.uwo_lambda == 0.5
    assert cfg.reward.weights == [1.0, 2.0] and cfg.reward.remote_retries == 5
    assert args.func.__name__ == "serve"


def test_cli_serves_in_a_subprocess(spec, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import argparse, sys; from rlpost.commands.reward_server import add_cli; p = argparse.ArgumentParser(); "
        "add_cli(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "reward-server", "--reward", spec("contains_answer"),
         "--reward", "boxed_format", "--port", str(port)],
        cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").json()["sources"] == [
                    "contains_answer",
                    "boxed_format",
                ]:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        out = RemoteReward(url)(["q", "q"], ["\\boxed{4}", "5"], answer=["4", "4"])
        assert out == [2.0, 0.0]
    finally:
        proc.terminate()
        log = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, log
    assert f"serving rewards ['contains_answer', 'boxed_format'] on {url}" in log


def test_cli_bad_spec_exits_2(capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["reward-server", "--reward", "no_such_reward"])
    assert args.func(args) == 2
    assert "unknown reward function 'no_such_reward'" in capsys.readouterr().err
