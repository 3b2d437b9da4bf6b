"""METEOR (exact matches), pairwise METEOR and distinct-n against values worked out by hand."""

from __future__ import annotations

import pytest

from rlpost.metrics import align, count_chunks, distinct_n, meteor, pairwise_meteor, tokenize


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("The cat, sat.") == ["the", "cat", ",", "sat", "."]
    assert tokenize(["Keep", "As", "Is"]) == ["Keep", "As", "Is"]


def test_identical_two_tokens():
    # P = R = 1 → F = 1; 1 chunk / 2 matches → penalty 0.5·(1/2)³ = 0.0625
    assert meteor("a b", "a b") == pytest.approx(0.9375)


def test_reordered_halves_make_two_chunks():
    # long runs first: "the cat sat" and "on the mat" → 6 matches, 2 chunks;
    # F = 1, penalty = 0.5·(2/6)³ = 1/54
    hyp, ref = "the cat sat on the mat", "on the mat the cat sat"
    assert count_chunks(align(tokenize(hyp), tokenize(ref))) == 2
    assert meteor(hyp, ref) == pytest.approx(1 - 1 / 54)


def test_partial_overlap():
    # m = 2 of 4 and 4: P = R = 1/2 → F = 0.25 / (0.45 + 0.05) = 0.5; penalty 0.5·(1/2)³
    assert meteor("the cat is here", "the cat was there") == pytest.approx(0.5 * 0.9375)


def test_recall_weighs_more_than_precision():
    # hyp ⊂ ref: P = 1, R = 1/2 → F = 0.5 / (0.9 + 0.05); swapped: F = 0.5 / (0.45 + 0.1)
    pen = 1 - 0.5 * (1 / 3) ** 3
    assert meteor("a b c", "a b c d e f") == pytest.approx(0.5 / 0.95 * pen)
    assert meteor("a b c d e f", "a b c") == pytest.approx(0.5 / 0.55 * pen)


def test_scattered_matches_are_penalised():
    # matches a, b, c each alone: 3 chunks / 3 matches → penalty 0.5 → F·0.5 with F = 1
    assert meteor("a b c", "c b a") == pytest.approx(0.5)


def test_no_overlap_and_empty():
    assert meteor("x y", "a b") == 0.0
    assert meteor("", "a b") == 0.0
    assert meteor("a", "") == 0.0


def test_repeated_tokens_match_once_each():
    # hyp "a a a" vs ref "a": 1 match. P = 1/3, R = 1 → F = (1/3)/(0.3 + 0.1) = 5/6;
    # 1 chunk / 1 match → penalty 0.5
    assert meteor("a a a", "a") == pytest.approx(5 / 6 * 0.5)
    assert len(align(["a", "a", "a"], ["a"])) == 1


def test_pairwise_meteor_only_across_prompts():
    # ordered cross-prompt pairs: (0,1), (1,0) score 0.9375; four pairs with "c" score 0
    groups = [["a b"], ["a b"], ["c"]]
    assert pairwise_meteor(groups) == pytest.approx(2 * 0.9375 / 6)
    # completions of the same prompt never pair: identical texts in one group give 0 pairs
    assert pairwise_meteor([["a b", "a b"]]) == 0.0


def test_pairwise_meteor_sampling_is_seeded_and_bounded():
    groups = [["a b c"], ["a b d"], ["x y z"], ["a y z"]]
    full = pairwise_meteor(groups)
    s1 = pairwise_meteor(groups, max_pairs=5, seed=3)
    assert s1 == pairwise_meteor(groups, max_pairs=5, seed=3)
    assert 0.0 <= s1 <= 1.0 and 0.0 < full < 1.0
    assert pairwise_meteor(groups, max_pairs=100) == pytest.approx(full)  # 12 pairs < 100


def test_distinct_n():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["a b", "a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a"], 2) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(["a"], 0)
