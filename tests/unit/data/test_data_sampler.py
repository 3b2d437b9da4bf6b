"""The sampler's stream is a function of (seed, draws so far): resume sees the same prompts."""

from __future__ import annotations

import json

import pytest

from rlpost.data import DataError, PromptSampler

ROWS = [{"prompt": f"p{i}", "row": i} for i in range(7)]


def ids(rows):
    return [r["row"] for r in rows]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = PromptSampler(ROWS, seed=3)
    e0, e1 = ids(s.next(7)), ids(s.next(7))
    assert sorted(e0) == sorted(e1) == list(range(7))
    assert e0 != e1  # reshuffled
    assert e0 != list(range(7))


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = PromptSampler(ROWS, 0), PromptSampler(ROWS, 0), PromptSampler(ROWS, 1)
    assert ids(a.next(20)) == ids(b.next(20))
    assert ids(PromptSampler(ROWS, 0).next(20)) != ids(c.next(20))


def test_draws_cross_epoch_boundaries():
    s = PromptSampler(ROWS, seed=5)
    stream = ids(s.next(3)) + ids(s.next(3)) + ids(s.next(3))  # third draw spans the boundary
    whole = ids(PromptSampler(ROWS, seed=5).next(9))
    assert stream == whole
    assert sorted(stream[:7]) == list(range(7))
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["pos"] == 2


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_resume_sees_the_uninterrupted_prompts(k):
    uninterrupted = PromptSampler(ROWS, seed=11)
    first = [ids(uninterrupted.next(3)) for _ in range(k)]
    expected = [ids(uninterrupted.next(3)) for _ in range(6)]

    run = PromptSampler(ROWS, seed=11)
    assert [ids(run.next(3)) for _ in range(k)] == first
    state = json.loads(json.dumps(run.state_dict()))  # goes through a checkpoint file
    resumed = PromptSampler(ROWS, seed=11)
    resumed.load_state_dict(state)
    assert [ids(resumed.next(3)) for _ in range(6)] == expected


def test_no_shuffle_is_in_order():
    s = PromptSampler(ROWS, seed=0, shuffle=False)
    assert ids(s.next(10)) == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]


def test_rows_are_copies():
    s = PromptSampler(ROWS, seed=0, shuffle=False)
    s.next(1)[0]["prompt"] = "changed"
    assert ROWS[0]["prompt"] == "p0"


def test_state_mismatch_is_an_error():
    s = PromptSampler(ROWS, seed=0)
    state = s.state_dict()
    with pytest.raises(DataError, match="size"):
        PromptSampler(ROWS[:5], seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        PromptSampler(ROWS, seed=9).load_state_dict(state)


def test_empty_dataset_is_an_error():
    with pytest.raises(DataError):
        PromptSampler([], seed=0)
