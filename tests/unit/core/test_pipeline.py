"""The rollout pipeline: batches made up to k steps ahead on one thread, syncs between calls."""

from __future__ import annotations

import threading

import pytest

from rlpost.runtime.pipeline import Pipeline


class Engine:
    """Records the order of calls on the engines' timeline, and which thread made them."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.threads: set[str] = set()
        self.version = 0
        self.gate = gate

    def produce(self, step: int) -> tuple[int, int]:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append(f"gen{step}")
        self.threads.add(threading.current_thread().name)
        return step, self.version  # the batch and the weights it was made by

    def sync(self) -> int:
        self.version += 1
        self.calls.append(f"sync{self.version}")
        return self.version


def run_loop(pipe: Pipeline, engine: Engine, steps: int) -> list[int]:
    """The trainer's order: get(t), train, sync; returns each batch's staleness at training."""
    lag = []
    for t in range(steps):
        step, made_by = pipe.get(t)
        assert step == t
        lag.append(engine.version - made_by)
        pipe.between_calls(engine.sync)
    pipe.close()
    return lag


def test_synchronous_pipeline_runs_in_the_callers_thread():
    engine = Engine()
    lag = run_loop(Pipeline(engine.produce, 0, 3), engine, 3)
    assert lag == [0, 0, 0]
    assert engine.calls == ["gen0", "sync1", "gen1", "sync2", "gen2", "sync3"]
    assert engine.threads == {threading.current_thread().name}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_batches_made_ahead_lag_by_at_most_k_versions(k):
    engine = Engine()
    lag = run_loop(Pipeline(engine.produce, k, 6), engine, 6)
    assert max(lag) == k  # it really ran ahead …
    assert all(0 <= x <= k for x in lag)  # … and never further than k
    assert engine.threads and threading.current_thread().name not in engine.threads
    assert [c for c in engine.calls if c.startswith("gen")] == [f"gen{i}" for i in range(6)]


def test_one_step_off_overlaps_the_next_generation_with_training():
    gate = threading.Event()
    engine = Engine(gate)
    pipe = Pipeline(engine.produce, 1, 3)
    gate.set()
    assert pipe.get(0) == (0, 0)
    assert pipe.in_flight == [1]  # step 1 is being made while step 0 trains
    gate.clear()  # hold step 1's generation: the sync must wait for it, not cut into it
    done = threading.Event()
    threading.Thread(target=lambda: (pipe.between_calls(engine.sync), done.set())).start()
    assert not done.wait(0.2)
    gate.set()
    assert done.wait(10)
    assert engine.calls == ["gen0", "gen1", "sync1"]
    assert pipe.get(1) == (1, 0)  # made by version 0, trained after sync 1: one step stale
    pipe.close()


def test_pipeline_makes_no_step_past_the_end_and_close_cancels_the_rest():
    gate = threading.Event()
    engine = Engine(gate)
    pipe = Pipeline(engine.produce, 3, 2)
    gate.set()
    assert pipe.get(0) == (0, 0)
    assert pipe.in_flight == [1]  # steps 2 and 3 are past the end
    pipe.close()
    assert pipe.in_flight == []
    gate2 = threading.Event()
    slow = Engine(gate2)
    pipe = Pipeline(slow.produce, 2, 10)
    threading.Timer(0.3, gate2.set).start()
    assert pipe.get(0) == (0, 0)
    pipe.close()  # step 1 was running or queued, step 2 queued: nothing left behind
    assert len(slow.calls) <= 3


def test_a_failed_production_raises_in_the_training_thread():
    def produce(step: int) -> int:
        if step == 1:
            raise RuntimeError("engine died")
        return step

    pipe = Pipeline(produce, 1, 3)
    assert pipe.get(0) == 0
    with pytest.raises(RuntimeError, match="engine died"):
        pipe.get(1)
    pipe.close()
