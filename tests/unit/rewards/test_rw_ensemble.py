"""Ensemble combination (mean / WCO / UWO) and per-member normalisation, against hand values."""

import json
import math

import pytest
import torch

from rewards.ensemble import (
    Ensemble,
    FixedNormalizer,
    RunningNormalizer,
    combine,
    disagreement,
    load_calibration,
)

# 3 members × 4 samples. Per column: values, mean, min, population variance
#   col 0: 1, 3, 2   mean 2  min 1   var (1+1+0)/3 = 2/3
#   col 1: 2, 2, 2   mean 2  min 2   var 0
#   col 2: 3, 1, 5   mean 3  min 1   var (0+4+4)/3 = 8/3
#   col 3: 4, 0, -1  mean 1  min -1  var (9+1+4)/3 = 14/3
S = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0], [2.0, 2.0, 5.0, -1.0]])


def close(a, b):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=1e-5
    )


def test_combine_mean():
    assert close(combine(S, "mean"), [2.0, 2.0, 3.0, 1.0])


def test_combine_wco_is_min():
    assert close(combine(S, "wco"), [1.0, 2.0, 1.0, -1.0])


def test_combine_uwo_population_variance():
    assert close(combine(S, "uwo"), [2 - 2 / 3, 2.0, 3 - 8 / 3, 1 - 14 / 3])
    assert close(combine(S, "uwo", uwo_lambda=0.5), [2 - 1 / 3, 2.0, 3 - 4 / 3, 1 - 7 / 3])
    assert close(combine(S, "uwo", uwo_lambda=0.0), combine(S, "mean"))


def test_combine_rejects_bad_input():
    with pytest.raises(ValueError, match="reward.ensemble.mode"):
        combine(S, "median")
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        combine(S[0], "mean")


def test_disagreement_mean_std():
    expected = (math.sqrt(2 / 3) + 0 + math.sqrt(8 / 3) + math.sqrt(14 / 3)) / 4
    assert disagreement(S) == pytest.approx(expected, abs=1e-6)


def test_running_normalizer_matches_all_data_seen():
    norm = RunningNormalizer(2)
    z1 = norm(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
    # first batch: its own stats (member 0 mean 2, var 2/3)
    assert close(z1[0], [-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3)])
    z2 = norm(torch.tensor([[4.0, 5.0], [40.0, 50.0]]))
    # all data: member 0 = 1..5 (mean 3, var 2), member 1 = 10..50 (mean 30, var 200)
    assert norm.count == 5
    assert close(norm.mean, [3.0, 30.0]) and close(norm.std**2, [2.0, 200.0])
    assert close(z2, [[1 / math.sqrt(2), 2 / math.sqrt(2)]] * 2)
    # resume: a fresh normaliser loaded from state gives the same next output
    again = RunningNormalizer(2)
    again.load_state_dict(json.loads(json.dumps(norm.state_dict())))
    nxt = torch.tensor([[0.0], [7.0]])
    assert torch.equal(again(nxt.clone()), norm(nxt.clone()))


def test_fixed_normalizer_from_calibration_scores():
    norm = FixedNormalizer.from_scores(torch.tensor([[0.0, 2.0], [10.0, 30.0]]))
    assert close(norm.mean, [1.0, 20.0]) and close(norm.std, [1.0, 10.0])
    assert close(norm(torch.tensor([[1.0, 3.0], [20.0, 40.0]])), [[0.0, 2.0], [0.0, 2.0]])
    # fixed: scoring does not move the statistics
    norm(torch.tensor([[100.0], [100.0]]))
    assert close(norm.mean, [1.0, 20.0])


class Fixed:
    """A stand-in reward model returning given scores."""

    def __init__(self, values):
        self.values = torch.tensor(values)

    def score(self, prompts, completions):
        return self.values[: len(completions)].clone()


class ByLength:
    def __init__(self, scale):
        self.scale = scale

    def score(self, prompts, completions):
        return torch.tensor([self.scale * len(c) for c in completions], dtype=torch.float32)


def test_ensemble_uwo_without_normalisation_and_metrics():
    ens = Ensemble([Fixed(row) for row in S.tolist()], mode="uwo", normalize="none")
    out, m = ens.score(["p"] * 4, ["c"] * 4)
    assert close(out, [4 / 3, 2.0, 1 / 3, -11 / 3])
    assert m["member0/mean"] == pytest.approx(2.5)
    assert m["member1/mean"] == pytest.approx(1.5)
    assert m["member2/mean"] == pytest.approx(2.0)
    assert m["disagreement"] == pytest.approx(disagreement(S), abs=1e-6)
    assert m["mean"] == pytest.approx(0.0, abs=1e-6)


def test_ensemble_running_normalisation_puts_members_on_one_scale():
    # member 1 is member 0 × 10: after normalisation they agree exactly
    ens = Ensemble([ByLength(1.0), ByLength(10.0)], mode="wco", normalize="running")
    out, m = ens.score(["p"] * 3, ["a", "aa", "aaa"])
    assert close(out, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert m["disagreement"] == pytest.approx(0.0, abs=1e-5)
    state = ens.state_dict()
    assert state["normalizer"]["count"] == 3


def test_ensemble_calibration_file(tmp_path):
    f = tmp_path / "calib.jsonl"
    f.write_text(
        json.dumps({"prompt": "q", "completion": "a"})
        + "\n"
        + json.dumps({"prompt": "q", "response": "aaa"})
        + "\n"
    )
    assert load_calibration(f) == (["q", "q"], ["a", "aaa"])
    # member 0 sees lengths 1, 3 (mean 2, std 1); member 1 sees 10, 30 (mean 20, std 10)
    ens = Ensemble(
        [ByLength(1.0), ByLength(10.0)], mode="mean", normalize="calibration", calibration=str(f)
    )
    out, _ = ens.score(["q", "q"], ["aa", "aaaa"])
    assert close(out, [0.0, 2.0])
    out2, _ = ens.score(["q"], ["aa"])  # fixed statistics: same input, same output
    assert close(out2, [0.0])


def test_ensemble_config_errors(tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        Ensemble([ByLength(1.0)], normalize="calibration")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="row 0 has no 'prompt'"):
        load_calibration(bad)
