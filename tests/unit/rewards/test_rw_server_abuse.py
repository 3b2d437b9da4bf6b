"""The reward server under abuse and load, and OpenRLHF's /get_reward protocol both ways."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rewards.remote import RemoteReward
from rewards.server import ServerHandle, create_app, serve_in_thread
from rlpost.config import load_config


def _cfg(*overrides: str):
    return load_config(None, ["model.path=unused", *overrides], validate_paths=False)


def _scorer(prompts, completions, columns, step):
    ans = columns.get("answer", [None] * len(completions))
    scores = [float(c.strip() == str(a)) for c, a in zip(completions, ans)]
    return scores, {"reward/mean": sum(scores) / len(scores)}


@pytest.fixture
def app_server():
    started = []

    def start(scorer=_scorer, **kw):
        h = ServerHandle(create_app(scorer, **kw))
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def test_bearer_token_required_when_configured(app_server):
    h = app_server(token="s3cret")
    body = {"prompts": ["p"], "completions": ["4"], "columns": {"answer": ["4"]}}
    assert httpx.post(f"{h.url}/score", json=body).status_code == 401
    bad = httpx.post(f"{h.url}/score", json=body, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.post(f"{h.url}/score", json=body, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["scores"] == [1.0]
    assert httpx.get(f"{h.url}/health").status_code == 401


def test_get_reward_speaks_openrlhf(app_server):
    h = app_server(max_body_bytes=4000)
    body = {"query": ["Q: 2+2? 4", "Q: 1+1? 3"], "prompts": ["Q: 2+2? ", "Q: 1+1? "]}
    r = httpx.post(f"{h.url}/get_reward", json={**body, "labels": ["4", "2"]})
    assert r.status_code == 200
    out = r.json()
    assert out["rewards"] == [1.0, 0.0] and out["scores"] == [1.0, 0.0]
    assert out["extra_logs"]["mean"] == [0.5, 0.5]
    wrong = httpx.post(f"{h.url}/get_reward", json={"query": ["a"], "labels": ["1", "2"]})
    assert wrong.status_code == 422 and "'labels'" in wrong.json()["detail"]
    no_query = httpx.post(f"{h.url}/get_reward", json={"prompts": ["a"]})
    assert no_query.status_code == 422 and "'query'" in no_query.json()["detail"]
    assert httpx.post(f"{h.url}/get_reward", content=b"[1,").status_code == 400
    big = httpx.post(f"{h.url}/get_reward", json={"query": ["x" * 5000]})
    assert big.status_code == 413


def test_remote_client_calls_an_openrlhf_url(app_server, monkeypatch):
    monkeypatch.setenv("RLPOST_REWARD_TOKEN", "tok")
    h = app_server(token="tok")
    rr = RemoteReward(f"{h.url}/get_reward", batch_size=2)
    out = rr(["a ", "b ", "c "], ["4", "5", "6"], answer=["4", "0", "6"])
    rr.close()
    assert out["rewards"] == [1.0, 0.0, 1.0]
    assert len(out["extra_logs"]["mean"]) == 3


def test_hung_function_times_out_and_its_worker_is_replaced(spec):
    cfg = _cfg(f"reward.functions=[{spec('sleeps_on_hang')}]", "reward.timeout_s=2")
    h, pipe = serve_in_thread(cfg)
    try:
        body = {"prompts": ["p"], "completions": ["hang"]}
        r = httpx.post(f"{h.url}/score", json=body, timeout=60)
        assert r.status_code == 500 and r.json()["kind"] == "timeout"
        assert pipe.pool.restarts == 1
        ok = httpx.post(f"{h.url}/score", json={"prompts": ["p"], "completions": ["fine"]})
        assert ok.status_code == 200 and ok.json()["scores"] == [1.0]
    finally:
        h.stop()
        pipe.close()


def test_200_concurrent_requests_none_lost_none_swapped(spec):
    cfg = _cfg(f"reward.functions=[{spec('echo_id')}]", "reward.workers=2")
    h, pipe = serve_in_thread(cfg)
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=200)) as client:

            def one(i: int) -> tuple[int, list]:
                body = {
                    "prompts": ["p", "q"],
                    "completions": ["a", "b"],
                    "columns": {"uid": [2 * i, 2 * i + 1]},
                }
                r = client.post(f"{h.url}/score", json=body)
                return r.status_code, r.json()["scores"]

            with ThreadPoolExecutor(200) as ex:
                results = list(ex.map(one, range(200)))
    finally:
        h.stop()
        pipe.close()
    assert [code for code, _ in results] == [200] * 200
    assert [s for _, s in results] == [[2.0 * i, 2.0 * i + 1] for i in range(200)]
