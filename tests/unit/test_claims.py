"""Verdicts on a paper's claim follow from 95 % intervals: hand-computed cases."""

from __future__ import annotations

import math

import pytest

from rlpost.commands import compare as cmp
from rlpost.commands.claims import Claim, difference, interval, judge, parse_claims, t975, verdict
from rlpost.config import ConfigError


def test_t_quantiles_and_interval_by_hand():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(2.5) == pytest.approx((4.303 + 3.182) / 2)
    assert t975(60) == pytest.approx(2.0, abs=0.002) and t975(0) == math.inf
    mu, h, n = interval([0.5, 0.6, 0.7])  # sd 0.1, t(2) = 4.303, /√3
    assert (mu, n) == (pytest.approx(0.6), 3) and h == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert interval([0.4]) == (0.4, math.inf, 1)
    assert interval([float("nan")])[2] == 0


def test_paired_and_welch_differences_by_hand():
    a, b = {0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.5, 2: 0.6}
    mu, lo, hi, how = difference(a, b)  # per seed 0.1, 0.2, 0.2: mean 0.1667, sd 0.0577
    h = 4.303 * 0.057735 / math.sqrt(3)
    assert mu == pytest.approx(1 / 6) and lo == pytest.approx(1 / 6 - h, abs=1e-4)
    assert hi == pytest.approx(1 / 6 + h, abs=1e-4) and how == "paired, 3 seeds"
    mu, lo, hi, how = difference({0: 0.6, 1: 0.8}, {5: 0.5, 6: 0.5, 7: 0.8})
    va, vb = 0.02, 0.03  # sample variances
    se2 = va / 2 + vb / 3
    df = se2**2 / ((va / 2) ** 2 / 1 + (vb / 3) ** 2 / 2)
    assert how == "Welch, 2 vs 3 seeds" and mu == pytest.approx(0.1)
    assert hi - mu == pytest.approx(t975(df) * math.sqrt(se2))
    assert difference({0: 0.6}, {0: 0.5})[1:3] == (-math.inf, math.inf)


def test_verdicts_follow_from_the_interval():
    assert verdict(0.01, 0.2, 0.05) == "reproduced"
    assert verdict(-0.04, 0.03, 0.05) == "not reproduced"  # any effect < the margin
    assert verdict(-0.3, -0.1, 0.05) == "not reproduced"  # reversed
    assert verdict(-0.02, 0.09, 0.05) == "inconclusive"


def test_judge_flips_the_sign_when_lower_is_better():
    finals = {
        "ens": {0: {"kl": 1.0}, 1: {"kl": 1.2}, 2: {"kl": 1.1}},
        "one": {0: {"kl": 2.0}, 1: {"kl": 2.3}, 2: {"kl": 2.1}},
    }
    j = judge(Claim("ensembles drift less", "kl", "ens", "one", higher=False, margin=0.1), finals)
    assert j["diff"] == pytest.approx(1.0333, abs=1e-4)  # per seed 1.0, 1.1, 1.0
    assert j["verdict"] == "reproduced"


def test_two_seeds_that_agree_exactly_give_no_verdict():
    """Accuracy moves in steps of 1/256: two seeds with the same difference would otherwise give
    a zero-width interval and a "reproduced" from noise."""
    finals = {"js": {0: {"accuracy": 0.50}, 1: {"accuracy": 0.48}},
              "rkl": {0: {"accuracy": 0.47}, 1: {"accuracy": 0.45}}}  # fmt: skip
    j = judge(Claim("JS wins", "accuracy", "js", "rkl", margin=0.03), finals)
    assert j["lo"] == pytest.approx(j["hi"]) == pytest.approx(0.03)
    assert j["verdict"] == "inconclusive"


def test_claims_are_checked_when_the_compare_file_loads(tmp_path):
    labels, metrics = ["grpo", "grpo_d"], ["accuracy", "kl"]
    ok = parse_claims(
        [{"metric": "accuracy", "better": "grpo_d", "than": "grpo"}], "f", labels, metrics
    )
    assert ok[0].name == "grpo_d > grpo on accuracy" and ok[0].margin == 0.02
    for bad, msg in [
        (
            [{"metric": "accuracy", "better": "grpo_x", "than": "grpo"}],
            r"claims\[0\].better: 'grpo_x'",
        ),
        ([{"metric": "acc", "better": "grpo_d", "than": "grpo"}], r"claims\[0\].metric: 'acc'"),
        (
            [{"metric": "kl", "better": "grpo_d", "than": "grpo", "margin": 0}],
            "margin: must be > 0",
        ),
        ([{"metric": "kl", "better": "grpo_d", "than": "grpo", "bogus": 1}], "unknown key"),
        ({"metric": "kl"}, "a list of"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_claims(bad, "f", labels, metrics)
    f = tmp_path / "c.yaml"
    f.write_text(
        "runs:\n  - {label: a, recipe: grpo_tiny}\n  - {label: b, recipe: grpo_tiny}\n"
        "claims:\n  - {metric: accuracy, better: b, than: a, margin: 0.05}\n"
    )
    spec = cmp.load_spec(f)
    assert spec.claims == [Claim("b > a on accuracy", "accuracy", "b", "a", True, 0.05)]


def test_report_states_intervals_and_verdicts():
    rows = []
    for arm, accs in (("grpo", (0.5, 0.52, 0.54)), ("grpo_d", (0.6, 0.63, 0.64))):
        for seed, acc in enumerate(accs):
            rows.append({"algorithm": arm, "seed": seed, "step": 10, "accuracy": acc, "kl": 1.0,
                         "reward": acc})  # fmt: skip
    text = "\n".join(cmp.claims_section([Claim("D wins", "accuracy", "grpo_d", "grpo")], rows))
    assert "| grpo | 3 | 0.52 [0.47, 0.57] |" in text  # sd 0.02, h = 4.303·0.02/√3 = 0.0497
    assert "| D wins | accuracy | 0.103 [" in text and "**reproduced**" in text
