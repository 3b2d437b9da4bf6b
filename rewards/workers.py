"""Reward functions run in separate worker processes, each call under a timeout.

User code must not be able to hang or crash the run: a call that exceeds the timeout gets its
worker killed and replaced, a worker that dies is replaced, and both come back as a
:class:`RewardError` for the pipeline's error policy. Workers stay alive across calls (a start
costs about a second) and load each function once, by spec string, so nothing user-defined is
ever pickled. ``workers=0`` runs in this process instead (debugging; timeout without kill).

A worker is a fresh interpreter (``python -m rewards.workers FD``) talking over a private
``multiprocessing`` socket pair: the isolation of the spawn start method, without spawn's
re-import of the parent's ``__main__`` (which re-runs an unguarded user script, or a Ray worker's
entry point, in every worker). A worker also exits when its parent disappears.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from rewards.base import CallResult, RewardError, TrainerState, make_caller, resolve_function

LOAD_TIMEOUT_S = 120.0  # starting and importing a user's file may be slow; it is not the call


def _short_tb(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-1:]
    where = f" (at {frames[0].filename}:{frames[0].lineno})" if frames else ""
    return f"raised {type(e).__name__}: {e}{where}"


def _load(cache: dict, spec: str, style: str, answer_key: str) -> Callable:
    key = (spec, style, answer_key)
    if key not in cache:
        cache[key] = make_caller(resolve_function(spec), style, answer_key)
    return cache[key]


def worker_main(conn: Connection) -> None:
    """Serve ``("load", spec, style, answer_key)`` and ``("call", spec, style, answer_key, payload)``."""
    cache: dict = {}
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone: exit quietly
            return
        if msg[0] == "stop":
            return
        op, spec, style, answer_key = msg[:4]
        try:
            caller = _load(cache, spec, style, answer_key)
            if op == "load":
                conn.send(("ok", None))
                continue
            prompts, completions, columns, state = msg[4]
            conn.send(("ok", caller(prompts, completions, columns, state)))
        except BaseException as e:  # noqa: BLE001 - user code: report everything, keep serving
            try:
                conn.send(("err", _short_tb(e)))
            except Exception:  # noqa: BLE001 - unpicklable exception text is impossible; be safe
                conn.send(("err", f"raised {type(e).__name__}"))


def _watch_parent(parent: int) -> None:
    """Exit when the parent is gone, even if a user function is hung (no orphans)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Worker:
    def __init__(self) -> None:
        self.conn, child = mp.Pipe(duplex=True)
        fd = child.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards.workers", str(fd), str(os.getpid())],
            pass_fds=[fd],
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        child.close()
        self.ready = False
        self.dead = False
        self.loaded: set[tuple[str, str, str]] = set()

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(LOAD_TIMEOUT_S):
            self.dead = True
            raise RuntimeError(f"reward worker did not start within {LOAD_TIMEOUT_S:.0f} s")
        self.conn.recv()
        self.ready = True

    def exitcode(self) -> int | None:
        try:
            return self.proc.wait(1)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            self.conn.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(2)
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in list(workers):
        w.stop()
    workers.clear()


class WorkerPool:
    """``n`` spawned processes; :meth:`call` runs one reward call in an idle one, with a timeout."""

    def __init__(self, n: int = 1, timeout_s: float = 30.0) -> None:
        if n < 0:
            raise ValueError(f"reward.workers: must be >= 0, got {n}")
        self.n, self.timeout_s = n, timeout_s
        self._all: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._local: dict = {}
        self.restarts = 0
        self.deaths = 0  # workers that died under a call (that call was retried once)
        for _ in range(n):
            self._add()
        self._finalizer = weakref.finalize(self, _shutdown, self._all)
        atexit.register(self._finalizer)

    def _add(self) -> None:
        w = _Worker()
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def _release(self, w: _Worker) -> None:
        if w.dead:
            self._replace(w)
        else:
            self._idle.put(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            if w in self._all:
                self._all.remove(w)
        self.restarts += 1
        if not self._closed:
            self._add()

    def load(self, spec: str, style: str, answer_key: str, name: str) -> None:
        """Import ``spec`` in a worker now, so a bad path or name fails at start-up, not mid-run."""
        if self.n == 0:
            _load(self._local, spec, style, answer_key)
            return
        w = self._idle.get()
        try:
            w.wait_ready()
            self._send_load(w, spec, style, answer_key, name)
        except (EOFError, OSError):
            w.dead = True
            raise RuntimeError(
                f"reward function '{name}' ({spec}): worker died while loading"
            ) from None
        finally:
            self._release(w)

    def _send_load(self, w: _Worker, spec: str, style: str, answer_key: str, name: str) -> None:
        key = (spec, style, answer_key)
        if key in w.loaded:
            return
        w.conn.send(("load", spec, style, answer_key))
        if not w.conn.poll(LOAD_TIMEOUT_S):
            w.dead = True
            raise RuntimeError(f"reward function '{name}' ({spec}): loading timed out")
        status, payload = w.conn.recv()
        if status != "ok":
            raise ValueError(f"reward function '{name}' ({spec}) could not be loaded: {payload}")
        w.loaded.add(key)

    def call(
        self,
        name: str,
        spec: str,
        style: str,
        answer_key: str,
        prompts: list,
        completions: list,
        columns: dict,
        state: TrainerState | int = 0,
    ) -> CallResult | RewardError:
        """One call; a whole-call failure (exception, timeout, dead worker) is returned, not raised."""
        if self.n == 0:
            return self._call_here(
                name, spec, style, answer_key, prompts, completions, columns, state
            )
        args = (name, spec, style, answer_key, prompts, completions, columns, state)
        out = self._call_once(*args)
        if isinstance(out, RewardError) and out.detail.startswith("worker process died"):
            # killed from outside (OOM killer, preemption): a fresh worker scores the batch again
            self.deaths += 1
            out = self._call_once(*args)
        return out

    def _call_once(
        self,
        name: str,
        spec: str,
        style: str,
        answer_key: str,
        prompts: list,
        completions: list,
        columns: dict,
        state: TrainerState | int,
    ) -> CallResult | RewardError:
        n = len(completions)
        w = self._idle.get()
        try:
            w.wait_ready()
            self._send_load(w, spec, style, answer_key, name)
            w.conn.send(("call", spec, style, answer_key, (prompts, completions, columns, state)))
            if not w.conn.poll(self.timeout_s):
                w.dead = True
                return RewardError(
                    name,
                    None,
                    "timeout",
                    f"timed out after {self.timeout_s:g} s (worker killed)",
                    n,
                )
            status, payload = w.conn.recv()
        except (EOFError, OSError):
            w.dead = True
            code = w.exitcode()
            return RewardError(
                name, None, "exception", f"worker process died (exit code {code})", n
            )
        finally:
            self._release(w)
        if status != "ok":
            return RewardError(name, None, "exception", payload, n)
        return payload

    def _call_here(
        self,
        name: str,
        spec: str,
        style: str,
        answer_key: str,
        prompts: list,
        completions: list,
        columns: dict,
        state: TrainerState | int,
    ) -> CallResult | RewardError:
        n = len(completions)
        caller = _load(self._local, spec, style, answer_key)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["ok"] = caller(prompts, completions, columns, state)
            except BaseException as e:  # noqa: BLE001
                box["err"] = _short_tb(e)

        t = threading.Thread(target=run, daemon=True, name=f"reward-{name}")
        t0 = time.monotonic()
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            return RewardError(
                name,
                None,
                "timeout",
                f"timed out after {time.monotonic() - t0:.1f} s (in-process: left running)",
                n,
            )
        if "err" in box:
            return RewardError(name, None, "exception", box["err"], n)
        return box["ok"]

    def close(self) -> None:
        self._closed = True
        self._finalizer()


if __name__ == "__main__":
    threading.Thread(target=_watch_parent, args=(int(sys.argv[2]),), daemon=True).start()
    worker_main(Connection(int(sys.argv[1])))
