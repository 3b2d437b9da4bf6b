from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError

from rlpost.config import Config
from rlpost.runtime import fault

SIGKILL_TEXT = (
    "The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: VLLMEngine\n\tactor_id: abc\n\tpid: 4242\n"
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
    "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. "
    "Some common causes include: (1) the process was killed by the OOM killer due to high "
    "memory usage, (2) ray stop --force was called."
)


class Died(ActorDiedError):
    def __init__(self, text: str = SIGKILL_TEXT) -> None:
        self.error_msg, self.actor_id = text, "abc"


def _cfg(max_restarts: int) -> Config:
    cfg = Config()
    cfg.trainer.max_restarts = max_restarts
    return cfg


def test_cause_keeps_the_exit_detail_and_drops_boilerplate():
    cause = fault.cause_of(Died())
    assert cause.startswith("Died: ")
    assert "End of file" in cause and "pid: 4242" in cause
    assert "class_name" not in cause and "died unexpectedly" not in cause
    assert "OOM killer" not in cause  # Ray's list of possible causes is not the cause


def test_budget_counts_restarts_then_names_group_actor_and_cause():
    guard = fault.Guard(_cfg(2), "rollout")
    guard.spend("engine[0]", Died())
    guard.spend("engine[1]", Died())
    assert guard.metrics() == {"fault/restarts_rollout": 2.0}
    with pytest.raises(fault.ActorFailure) as e:
        guard.spend("engine[1]", Died("The actor died: killed due to memory pressure (OOM)"))
    msg = str(e.value)
    assert msg.startswith("rollout: actor engine[1] died") and "trainer.max_restarts=2" in msg
    assert "OOM" in msg and "\n" not in msg


def test_zero_restarts_fails_at_the_first_death():
    with pytest.raises(fault.ActorFailure, match="reference: actor reference.0. died"):
        fault.Guard(_cfg(0), "reference").spend("reference[0]", Died())


def test_pending_restarts_the_actor_and_resubmits_until_it_answers(monkeypatch):
    answers = iter([Died(), Died(), "scores"])

    def fake_get(ref, timeout=None):  # the ray.get of a call whose actor died twice
        a = next(answers)
        if isinstance(a, BaseException):
            raise a
        return a

    monkeypatch.setattr(fault.ray, "get", fake_get)
    guard, calls = fault.Guard(_cfg(3), "reward"), []
    pending = fault.Pending(guard, "reward[0]", lambda: calls.append("submit"), lambda: None)
    assert pending.result() == "scores"
    assert calls == ["submit"] * 3 and guard.restarts == 2


def test_a_user_exception_is_not_a_death(monkeypatch):
    def fake_get(ref, timeout=None):
        raise ValueError("boom in the reward function")

    monkeypatch.setattr(fault.ray, "get", fake_get)
    pending = fault.Pending(fault.Guard(_cfg(3), "reward"), "reward[0]", lambda: 1, lambda: None)
    with pytest.raises(ValueError, match="boom"):
        pending.result()


def test_a_wait_past_the_deadline_names_the_actor(monkeypatch):
    from ray.exceptions import GetTimeoutError

    def fake_get(ref, timeout=None):
        assert timeout == 5.0
        raise GetTimeoutError("timed out")

    monkeypatch.setattr(fault.ray, "get", fake_get)
    cfg = _cfg(3)
    cfg.trainer.actor_timeout_s = 5.0
    with pytest.raises(fault.ActorTimeout, match=r"learner: learner ranks \(train\) .* 5 s"):
        fault.Guard(cfg, "learner").get([1], "learner ranks (train)")


def test_injection_plan_is_read_per_step(monkeypatch):
    monkeypatch.setenv(fault.INJECT_ENV, "rollout:0:2,learner:1:4,save:0:3")
    assert fault.planned_kills(2) == [("rollout", 0)]
    assert fault.planned_kills(4) == [("learner", 1)]
    assert fault.planned_kills(1) == []


def _fake_ray(monkeypatch, results: dict, hang: set = frozenset()):
    """ray.wait hands back refs one at a time (those in ``hang`` never); ray.get gives
    ``results[ref]`` or raises it when it is an exception."""

    def wait(pending, num_returns=1, timeout=None):
        ready = [r for r in pending if r not in hang][:1]
        return ready, [r for r in pending if r not in ready]

    def get(refs, timeout=None):
        if isinstance(refs, list):
            return [get(r) for r in refs]
        if isinstance(results[refs], BaseException):
            raise results[refs]
        return results[refs]

    monkeypatch.setattr(fault.ray, "wait", wait)
    monkeypatch.setattr(fault.ray, "get", get)


def test_start_waits_for_every_group_and_hands_each_its_results(monkeypatch):
    _fake_ray(monkeypatch, {"e0": 1.5, "l0": 7, "l1": 7, "ref": None})
    got: dict = {}
    starts = [
        fault.Starting("rollout", ["engine[0]"], ["e0"], lambda r: got.update(rollout=r)),
        fault.Starting(
            "learner", ["learner[0]", "learner[1]"], ["l0", "l1"], lambda r: got.update(learner=r)
        ),
        fault.Starting("reference", ["reference[0]"], ["ref"]),
        fault.Starting("critic", [], []),
    ]
    seconds = fault.wait_started(starts, timeout_s=60)
    assert got == {"rollout": [1.5], "learner": [7, 7]}
    assert set(seconds) == {"rollout", "learner", "reference", "critic"}


def test_start_names_the_group_and_actor_that_died(monkeypatch):
    _fake_ray(monkeypatch, {"e0": 1.0, "w": Died()})
    starts = [
        fault.Starting("rollout", ["engine[0]"], ["e0"]),
        fault.Starting("reward", ["reward[0]"], ["w"]),
    ]
    with pytest.raises(fault.ActorFailure, match=r"^reward: reward\[0\] died while starting"):
        fault.wait_started(starts, timeout_s=60)


def test_start_past_the_deadline_names_every_actor_still_starting(monkeypatch):
    _fake_ray(monkeypatch, {"e0": 1.0, "l0": 3, "l1": 3}, hang={"l0", "l1"})
    starts = [
        fault.Starting("rollout", ["engine[0]"], ["e0"]),
        fault.Starting("learner", ["learner[0]", "learner[1]"], ["l0", "l1"]),
    ]
    with pytest.raises(fault.ActorTimeout, match=r"learner\[0\], learner\[1\] did not come up"):
        fault.wait_started(starts, timeout_s=0)


def test_start_raises_an_actors_own_error_as_it_is(monkeypatch):
    _fake_ray(monkeypatch, {"l0": ValueError("no such model")})
    with pytest.raises(ValueError, match="no such model"):
        fault.wait_started([fault.Starting("learner", ["learner[0]"], ["l0"])], timeout_s=60)
