"""Fault handling shared by the actor groups: restart budgets, waits with a deadline, and the one
final error that names the group, the actor and the last cause.

The policy lives here and in the group handles, never in an algorithm or in the loop:

- a rollout engine, reward actor or frozen (reference/teacher) actor that dies is recreated on its
  placement bundle and the call it owed is submitted again (:class:`Pending`, :func:`call_each`);
- a learner or critic rank that dies makes its group rebuild every rank and raise :class:`Rewind`;
  the trainer then reloads the last checkpoint and redoes the steps after it;
- every group has ``trainer.max_restarts`` restarts; the next death raises :class:`ActorFailure`;
- every wait on an actor has a deadline (``trainer.actor_timeout_s``): an actor on a node that is
  gone, or hung, becomes an :class:`ActorTimeout` naming it instead of a hang.

Test hook: ``RLPOST_FAULT_INJECT="group:index:step"`` (comma-separated for several) makes
:func:`inject` SIGKILL that actor's process at the start of step ``step`` (numbered as in
metrics.jsonl). ``group`` is a group name, ``reward_worker`` for the reward actor's first function
worker process, or ``save`` to kill the driver itself while it writes checkpoint ``step``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    OutOfMemoryError,
    RayActorError,
    WorkerCrashedError,
)

log = logging.getLogger("rlpost")

# What "the actor is gone" looks like to a caller (a user exception inside an actor is a
# RayTaskError and is NOT one of these: it is a bug to report, not a fault to retry).
DEATH = (RayActorError, ActorUnavailableError, WorkerCrashedError, OutOfMemoryError)
INJECT_ENV = "RLPOST_FAULT_INJECT"


class ActorFailure(RuntimeError):
    """A group cannot go on: its restart budget is spent, or an actor stopped answering."""


class ActorTimeout(ActorFailure):
    """An actor did not answer within the deadline (its node may be gone, or it hung)."""


class Rewind(Exception):
    """A learner/critic group was rebuilt from scratch: the driver must reload the last
    checkpoint (weights, optimizer, sampler, algorithm state, RNG) and redo the steps after it."""

    def __init__(self, group: str, actor: str, cause: str) -> None:
        super().__init__(f"{group}: {actor} died ({cause}); all ranks rebuilt")
        self.group, self.actor, self.cause = group, actor, cause


def cause_of(err: BaseException) -> str:
    """One line saying why an actor died: Ray's exit detail (OOM text, signal, node death)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("The actor died unexpectedly", "class_name"))]
    keep = [ln for ln in lines if not ln.startswith(("actor_id:", "namespace:", "name:"))]
    text = "; ".join(keep) or type(err).__name__
    text = text.split(" Some common causes include")[0]  # Ray's guesses, not what happened
    return f"{type(err).__name__}: {text}"[:600]


class Guard:
    """One group's fault state: its restart budget and deadlines."""

    def __init__(self, cfg: Any, group: str) -> None:
        t = cfg.trainer
        self.group = group
        self.max_restarts = int(getattr(t, "max_restarts", 3))
        self.timeout_s = float(getattr(t, "actor_timeout_s", 1800.0))
        self.start_timeout_s = float(getattr(t, "start_timeout_s", 1800.0))
        self.restarts = 0
        self.last_cause = ""

    def spend(self, actor: str, err: BaseException) -> str:
        """Count one restart of ``actor``; raise ActorFailure when the budget is spent."""
        cause = cause_of(err)
        self.last_cause = cause
        if self.restarts >= self.max_restarts:
            raise ActorFailure(
                f"{self.group}: actor {actor} died and the group's restart budget is spent "
                f"({self.restarts} of trainer.max_restarts={self.max_restarts} used); "
                f"last cause: {cause}"
            ) from err
        self.restarts += 1
        log.warning(
            "%s: actor %s died (%s); restart %d of %d",
            self.group,
            actor,
            cause,
            self.restarts,
            self.max_restarts,
        )
        return cause

    def get(self, refs: Any, what: str, timeout_s: float | None = None) -> Any:
        """``ray.get`` with a deadline; a timeout is an ActorTimeout naming ``what``."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            return ray.get(refs, timeout=limit)
        except GetTimeoutError:
            raise self._late(what, limit) from None

    def _late(self, what: str, limit: float) -> ActorTimeout:
        return ActorTimeout(
            f"{self.group}: {what} did not answer within {limit:g} s "
            f"(trainer.actor_timeout_s / trainer.start_timeout_s): its node may be gone "
            f"or the actor hung"
        )

    def get_all(self, refs: list, what: str, timeout_s: float | None = None) -> list:
        """Results of ``refs`` in order; the first failure surfaces as soon as it is known (a
        rank that died must not wait behind a survivor stuck in a collective)."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline, pending = time.monotonic() + limit, list(refs)
        while pending:
            left = deadline - time.monotonic()
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, left))
            if not ready:
                raise self._late(what, limit)
            ray.get(ready[0])  # raises at once if that call failed
        return ray.get(refs)

    def metrics(self) -> dict[str, float]:
        return {f"fault/restarts_{self.group}": float(self.restarts)}


@dataclass
class Starting:
    """The calls a group waits on before it is up (one ref per actor, named like ``learner[1]``)
    and what to do with their results. Groups hand these to :func:`wait_started` so every group
    starts at once instead of one after another."""

    group: str
    names: list[str]
    refs: list
    done: Callable[[list], None] = lambda results: None


def wait_started(starts: list[Starting], timeout_s: float) -> dict[str, float]:
    """Wait for the start calls of every group together, one deadline for all; returns each
    group's seconds until its last actor was up (from this call).

    An actor that died while starting raises :class:`ActorFailure` naming its group and actor; a
    deadline raises :class:`ActorTimeout` naming every actor still starting; an exception raised
    by an actor's own start code (a bug, a bad model path) is logged with its group and raised
    as it is."""
    t0 = time.monotonic()
    owner = {ref: (s, name) for s in starts for name, ref in zip(s.names, s.refs)}
    left = {s.group: len(s.refs) for s in starts}
    seconds = {s.group: 0.0 for s in starts if not s.refs}
    for s in starts:
        if not s.refs:
            s.done([])
    pending = list(owner)
    while pending:
        ready, pending = ray.wait(
            pending, num_returns=1, timeout=max(0.0, timeout_s - (time.monotonic() - t0))
        )
        if not ready:
            late = ", ".join(owner[r][1] for r in pending)
            raise ActorTimeout(
                f"start: {late} did not come up within {timeout_s:g} s "
                f"(trainer.start_timeout_s): its node may be gone or the actor hung"
            )
        s, name = owner[ready[0]]
        try:
            ray.get(ready[0])
        except DEATH as e:
            raise ActorFailure(f"{s.group}: {name} died while starting: {cause_of(e)}") from e
        except Exception:
            log.error("%s: %s failed while starting", s.group, name)
            raise
        left[s.group] -= 1
        if not left[s.group]:
            seconds[s.group] = time.monotonic() - t0
            s.done(ray.get(s.refs))
    return seconds


class Pending:
    """An actor call that survives the actor's death: ``result()`` waits (with the deadline) and,
    when the actor died, has the group restart it and submits the same call again."""

    def __init__(
        self,
        guard: Guard,
        actor: str,
        submit: Callable[[], ray.ObjectRef],
        restart: Callable[[], None],
    ) -> None:
        self.guard, self.actor, self.submit, self.restart = guard, actor, submit, restart
        self.ref = submit()

    def result(self) -> Any:
        while True:
            try:
                return self.guard.get(self.ref, self.actor)
            except DEATH as e:
                self.guard.spend(self.actor, e)
                self.restart()
                self.ref = self.submit()


def call_each(
    guard: Guard,
    names: list[str],
    submit: Callable[[int], ray.ObjectRef | None],
    restart: Callable[[int], None],
) -> dict[int, Any]:
    """Submit one call per actor (``submit(i)``; None = nothing for that actor) and wait for all;
    an actor that dies is restarted and its call submitted again. Returns {index: result}."""
    refs = {i: r for i in range(len(names)) if (r := submit(i)) is not None}
    out: dict[int, Any] = {}
    while refs:
        i, ref = next(iter(refs.items()))
        try:
            out[i] = guard.get(ref, names[i])
            del refs[i]
        except DEATH as e:
            guard.spend(names[i], e)
            restart(i)
            refs[i] = submit(i)
    return out


def find_death(refs: list, wait_s: float = 30.0) -> BaseException | None:
    """The actor-death error among ``refs``, if any settles within ``wait_s``: when one rank of a
    collective dies, the others may fail first with an ordinary error about a closed peer."""
    deadline = time.monotonic() + wait_s
    for ref in refs:
        try:
            ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except DEATH as e:
            return e
        except Exception:  # noqa: BLE001 - not the death we look for; check the next rank
            continue
    return None


def handles(group: Any) -> list[Any]:
    """The actor handles a group handle holds right now (engines, ranks, or its one actor)."""
    for attr in ("engines", "workers"):
        if isinstance(getattr(group, attr, None), list):
            return list(getattr(group, attr))
    return [group.actor] if getattr(group, "actor", None) is not None else []


def kill_quietly(actors: Iterable[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


def wait_dead(actors: list[Any], timeout_s: float = 30.0) -> int:
    """Wait until every killed actor is reported dead; returns how many still answer.

    ``ray.kill`` only queues the kill: a driver that exits at once leaves a shared cluster to
    find its actors through the job's cleanup, later (and on a loaded head, after the checks of
    whoever looks). An actor that still answers is killed again."""
    deadline = time.monotonic() + timeout_s
    alive = list(actors)
    while alive and time.monotonic() < deadline:
        pings = []
        for a in alive:
            try:
                pings.append((a, a.__ray_ready__.remote()))
            except Exception:  # noqa: BLE001 - a handle that cannot even submit is gone
                continue
        alive = []
        for a, ref in pings:
            try:
                ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                alive.append(a)  # answered: the kill has not landed yet
            except GetTimeoutError:
                alive.append(a)
            except Exception:  # noqa: BLE001 - RayActorError: dead, as wanted
                continue
        kill_quietly(alive)
        if alive:
            time.sleep(0.5)
    return len(alive)


def metrics(groups: Iterable[Any]) -> dict[str, float]:
    """``fault/restarts_<group>`` for every group handle that keeps a Guard."""
    out: dict[str, float] = {}
    for g in groups:
        for guard in getattr(g, "guards", lambda: [])():
            out.update(guard.metrics())
    return out


def until_done(fit: Callable[[], Any], rewind: Callable[[Rewind], None]) -> Any:
    """Run ``fit``; when a learner group was rebuilt, ``rewind`` to the last checkpoint and go on.
    (The budget of such rebuilds is the learner group's own restart budget.)"""
    while True:
        try:
            return fit()
        except Rewind as r:
            rewind(r)


# ------------------------------------------------------------------------------ signals


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send first): unwinds like Ctrl-C, so every ``finally``
    runs and the run's actors are torn down; the CLI exits 143."""

    exit_code = 143


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def catch_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread (Ray's own driver handler calls
    ``sys.exit``, which a ``except Exception`` in between would not see but also not report)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While tearing down, a further SIGINT/SIGTERM is noted, not raised: an interrupted teardown
    is what leaves actors behind on a shared cluster."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            log.warning("signal %s during teardown: teardown finished first", got)


# ------------------------------------------------------------------------------ test hook


def _pid(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def _reward_worker_pid(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: self.pool._all[0].proc.pid), timeout=60)


def planned_kills(step: int) -> list[tuple[str, int]]:
    """(group, index) pairs that ``RLPOST_FAULT_INJECT`` asks to kill at ``step`` (1-based)."""
    out = []
    for item in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
        group, index, at = item.split(":")
        if int(at) == step:
            out.append((group, int(index)))
    return out


def inject(step: int, trainer: Any) -> None:
    """Test hook: SIGKILL the real process of each actor planned for ``step`` (see module doc),
    found through the trainer's group handles. Each kill fires once per process run."""
    for group, index in planned_kills(step):
        key = f"{group}:{index}:{step}"
        if key in _fired or group == "save":
            continue
        _fired.add(key)
        attr = {"learner": "learners", "reward_worker": "reward"}.get(group, group)
        handle = handles(getattr(trainer, attr))[index]
        pid = _reward_worker_pid(handle) if group == "reward_worker" else _pid(handle)
        log.warning("fault injection: SIGKILL %s[%d] (pid %d) at step %d", group, index, pid, step)
        print(f"FAULT_INJECT kill {group}[{index}] pid={pid} t={time.time():.3f}", flush=True)
        os.kill(pid, signal.SIGKILL)  # the actors of a CI run live on this machine


def kill_self_during_save(step: int) -> None:
    """Test hook: ``save:0:K`` SIGKILLs the driver while it writes checkpoint K (after the learner
    shards, before the rename), from a thread, as a preemption would."""
    if ("save", 0) not in planned_kills(step):
        return
    print(f"FAULT_INJECT kill driver mid-save of step {step}", flush=True)
    threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGKILL), daemon=True).start()
    time.sleep(30)  # the kill arrives first


_fired: set[str] = set()
