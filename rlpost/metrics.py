"""Text metrics for diversity and reward hacking: METEOR (exact matches), pairwise METEOR across
prompts (SuperHF's mode-collapse signal), distinct-n.

nltk's ``meteor_score`` needs WordNet, which cannot be downloaded offline, so METEOR's core is
written out here: unigram precision P and recall R over exactly matching tokens, the recall-heavy
harmonic mean F = P·R / (α·P + (1−α)·R), and the fragmentation penalty γ·(chunks/matches)^β,
score = F·(1 − penalty). Defaults α = 0.9, β = 3, γ = 0.5 (Banerjee & Lavie 2005, as in nltk).
No stemming or synonym stages.
"""

from __future__ import annotations

import heapq
import random
import re
from collections import defaultdict
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str | Sequence[str]) -> list[str]:
    """Lower-cased words and punctuation marks; a token list passes through unchanged."""
    if isinstance(text, str):
        return _TOKEN.findall(text.lower())
    return list(text)


def align(hyp: Sequence[str], ref: Sequence[str]) -> list[tuple[int, int]]:
    """Exact one-to-one token matches (hyp index, ref index), longest common runs first.

    Taking long runs first keeps the number of chunks low, as METEOR's aligner intends (it
    prefers the alignment with the fewest crossings); ties go to the earliest hyp, then ref
    position, so the result is deterministic. Every token that can match does match.
    """
    where: dict[str, list[int]] = defaultdict(list)
    for j, w in enumerate(ref):
        where[w].append(j)
    run: dict[tuple[int, int], int] = {}
    for i in range(len(hyp) - 1, -1, -1):
        for j in where.get(hyp[i], ()):
            run[(i, j)] = 1 + run.get((i + 1, j + 1), 0)
    heap = [(-n, i, j) for (i, j), n in run.items()]
    heapq.heapify(heap)
    used_h, used_r = [False] * len(hyp), [False] * len(ref)
    matches: list[tuple[int, int]] = []
    while heap:
        neg, i, j = heapq.heappop(heap)
        free = 0
        while free < -neg and not used_h[i + free] and not used_r[j + free]:
            free += 1
        if free == -neg:
            for t in range(free):
                used_h[i + t] = used_r[j + t] = True
                matches.append((i + t, j + t))
        elif free:  # a shorter run survives; the parts after the clash have their own entries
            heapq.heappush(heap, (-free, i, j))
    return sorted(matches)


def count_chunks(matches: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent in both the hypothesis and the reference."""
    chunks, prev = 0, None
    for i, j in sorted(matches):
        if prev is None or (i, j) != (prev[0] + 1, prev[1] + 1):
            chunks += 1
        prev = (i, j)
    return chunks


def meteor(
    hyp: str | Sequence[str],
    ref: str | Sequence[str],
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """METEOR of one hypothesis against one reference, exact matches only (0 when none match)."""
    h, r = tokenize(hyp), tokenize(ref)
    matches = align(h, r)
    m = len(matches)
    if m == 0:
        return 0.0
    p, rec = m / len(h), m / len(r)
    f_mean = p * rec / (alpha * p + (1.0 - alpha) * rec)
    penalty = gamma * (count_chunks(matches) / m) ** beta
    return f_mean * (1.0 - penalty)


def pairwise_meteor(
    texts_by_prompt: Sequence[Sequence[str]], max_pairs: int = 0, seed: int = 0
) -> float:
    """Mean METEOR over ordered pairs of completions to *different* prompts (SuperHF's
    reward-hacking metric: high means the policy says the same thing whatever it is asked).

    With ``max_pairs`` > 0 and more pairs than that, a seeded uniform sample of pairs is used.
    Returns 0.0 when fewer than two prompts have completions.
    """
    items = [(g, tokenize(t)) for g, texts in enumerate(texts_by_prompt) for t in texts]
    sizes = [len(t) for t in texts_by_prompt]
    total = len(items) ** 2 - sum(s * s for s in sizes)
    if total <= 0:
        return 0.0
    if max_pairs <= 0 or total <= max_pairs:
        pairs = [
            (a, b)
            for a in range(len(items))
            for b in range(len(items))
            if items[a][0] != items[b][0]
        ]
    else:
        rng, pairs = random.Random(seed), []
        while len(pairs) < max_pairs:
            a, b = rng.randrange(len(items)), rng.randrange(len(items))
            if items[a][0] != items[b][0]:
                pairs.append((a, b))
    return sum(meteor(items[a][1], items[b][1]) for a, b in pairs) / len(pairs)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over the texts (Li et al. 2016); 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [
        tuple(toks[i : i + n]) for toks in map(tokenize, texts) for i in range(len(toks) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0
