"""A reward that lives on other machines: calls ``rlpost reward-server`` instances over HTTP.

A URL ending in ``/get_reward`` speaks OpenRLHF's remote reward-model protocol instead
(``{"query", "prompts", "labels"}`` → ``{"rewards", "scores", "extra_logs"}``), so an OpenRLHF
reward server (or ``rlpost reward-server``, which answers both) plugs in unchanged. A bearer
token is sent when ``RLPOST_REWARD_TOKEN`` is set.

Big batches are split into requests of ``batch_size`` rows, sent concurrently and spread over
the given URLs (replicas of one reward). Connection errors, timeouts, 429 and 5xx are retried
with exponential backoff, moving to the next URL; other 4xx fail at once. Every error names the
URL and what it answered.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RemoteRewardError(RuntimeError):
    """A remote reward failed for good; the message names the URL(s)."""


def _jsonable(x: Any) -> Any:
    if callable(getattr(x, "tolist", None)):
        return x.tolist()
    return str(x)


class RemoteReward:
    """TRL-signature reward backed by one or more reward-server URLs (replicas)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        batch_size: int = 64,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        concurrency: int = 4,
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split("|") if u]
        if not urls:
            raise ValueError("reward.remote: no URL given")
        self.urls = [u.rstrip("/") for u in urls]
        kinds = {u.endswith("/get_reward") for u in self.urls}
        if len(kinds) > 1:
            raise ValueError(f"reward.remote: mixes /get_reward and rlpost URLs: {'|'.join(urls)}")
        self.openrlhf = kinds == {True}
        token = os.environ.get("RLPOST_REWARD_TOKEN", "")
        self.headers = {"content-type": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"
        self.batch_size, self.timeout_s, self.retries = max(1, batch_size), timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.concurrency = max(1, concurrency)
        self._client = httpx.Client(timeout=timeout_s)
        self.__name__ = "remote"

    def __repr__(self) -> str:
        return f"RemoteReward({'|'.join(self.urls)})"

    def health(self) -> list[dict]:
        """``GET /health`` of every URL (raises naming the first that does not answer)."""
        out = []
        for u in self.urls:
            try:
                r = self._client.get(f"{u}/health")
                r.raise_for_status()
                out.append(r.json())
            except httpx.HTTPError as e:
                raise RemoteRewardError(f"remote reward {u}/health: {type(e).__name__}: {e}") from e
        return out

    def _post(self, chunk: int, body: bytes, n: int) -> Any:
        """One request with retries; replicas are tried in turn starting at ``chunk``'s URL."""
        last = ""
        for attempt in range(self.retries + 1):
            base = self.urls[(chunk + attempt) % len(self.urls)]
            url = base if self.openrlhf else f"{base}/score"
            try:
                r = self._client.post(url, content=body, headers=self.headers)
            except httpx.HTTPError as e:  # connect error, timeout, broken connection
                last = f"{url}: {type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return (
                        self._parse_openrlhf(url, r, n)
                        if self.openrlhf
                        else self._parse(base, r, n)
                    )
                last = f"{url}: HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in RETRY_STATUS:
                    raise RemoteRewardError(f"remote reward {last}")
            if attempt < self.retries:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))
        raise RemoteRewardError(
            f"remote reward failed after {self.retries + 1} attempts; last: {last}"
        )

    @staticmethod
    def _parse(url: str, r: httpx.Response, n: int) -> list[float | None]:
        try:
            scores = r.json()["scores"]
        except (ValueError, KeyError, TypeError) as e:
            raise RemoteRewardError(
                f"remote reward {url}/score: answer has no 'scores' list: {r.text[:200]}"
            ) from e
        if not isinstance(scores, list) or len(scores) != n:
            got = len(scores) if isinstance(scores, list) else type(scores).__name__
            raise RemoteRewardError(f"remote reward {url}/score: {got} scores for {n} rows")
        return [None if s is None else float(s) for s in scores]

    @staticmethod
    def _parse_openrlhf(url: str, r: httpx.Response, n: int) -> dict[str, Any]:
        try:
            out = r.json()
            rewards = out["rewards"]
        except (ValueError, KeyError, TypeError) as e:
            raise RemoteRewardError(
                f"remote reward {url}: answer has no 'rewards' list: {r.text[:200]}"
            ) from e
        if not isinstance(rewards, list) or len(rewards) != n:
            got = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
            raise RemoteRewardError(f"remote reward {url}: {got} rewards for {n} rows")
        logs = out.get("extra_logs") or {}
        return {
            "rewards": rewards,
            "scores": out.get("scores") if isinstance(out.get("scores"), list) else None,
            "extra_logs": {k: v if isinstance(v, list) else [v] for k, v in logs.items()},
        }

    def _payload(self, prompts: list, completions: list, columns: dict, step: int) -> dict:
        if self.openrlhf:
            labels = columns.get("answer", [None] * len(prompts))
            return {
                "query": [f"{p}{c}" for p, c in zip(prompts, completions)],
                "prompts": list(prompts),
                "labels": list(labels),
            }
        return {"prompts": prompts, "completions": completions, "columns": columns, "step": step}

    def __call__(
        self, prompts: list, completions: list[str], step: int = 0, **columns: Any
    ) -> list[float | None] | dict[str, Any]:
        """Scores (rlpost servers) or OpenRLHF's ``{"rewards", "scores", "extra_logs"}``."""
        n = len(completions)
        if n == 0:
            return []
        bodies = []
        for s in range(0, n, self.batch_size):
            e = min(n, s + self.batch_size)
            cols = {k: list(v[s:e]) for k, v in columns.items() if _is_column(v, n)}
            payload = self._payload(list(prompts[s:e]), list(completions[s:e]), cols, step)
            bodies.append((s, e, json.dumps(payload, default=_jsonable).encode()))
        workers = min(self.concurrency, len(bodies))
        with ThreadPoolExecutor(workers, thread_name_prefix="remote-reward") as ex:
            parts = list(
                ex.map(lambda a: self._post(a[0], a[1][2], a[1][1] - a[1][0]), enumerate(bodies))
            )
        if not self.openrlhf:
            return [x for p in parts for x in p]
        merged: dict[str, Any] = {"rewards": [], "scores": [], "extra_logs": {}}
        for p in parts:
            merged["rewards"] += p["rewards"]
            merged["scores"] += p["scores"] or []
            for k, v in p["extra_logs"].items():
                merged["extra_logs"].setdefault(k, []).extend(v)
        return merged

    def close(self) -> None:
        self._client.close()


def _is_column(v: Any, n: int) -> bool:
    """Only per-row sequences travel; scalars (like ``trainer_state``) stay behind."""
    return isinstance(v, (list, tuple)) and len(v) == n
