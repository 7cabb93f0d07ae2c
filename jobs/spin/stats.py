"""Paired comparisons of two models answering the same prompts: the difference of their means, a 95% paired
bootstrap interval of it, the exact McNemar p for right/wrong outcomes, and a verdict.

Two models evaluated on the same prompts are compared prompt by prompt (paired): the per-prompt differences
d_i = a_i − b_i are resampled with replacement, and the interval holds the central 95% of the resampled means.
The verdict follows the interval: a gain only when the whole interval lies on the better side of 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

Verdict = Literal["better", "no detectable difference", "worse"]
RESAMPLES = 10_000  # resampled means per interval; the quantiles move by < 0.1 point beyond this on 2,000 prompts


@dataclass(frozen=True)
class Interval:
    difference: float  # mean of a − b
    low: float
    high: float


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of a − b over paired items, and the percentile bootstrap interval of that mean."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or d.ndim != 1 or len(d) == 0:
        raise ValueError(f"a paired comparison needs two equally long, non-empty series; got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // len(d))  # resampled indices held at once: bounded memory
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start : start + count] = d[rng.integers(0, len(d), size=(count, len(d)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(d.mean()), float(low), float(high))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact (two-sided binomial) McNemar p of paired right/wrong outcomes.

    Only the discordant items count: n_a (a right, b wrong) and n_b (b right, a wrong). Under "no difference"
    each discordant item goes either way with probability ½, so p = min(1, 2 · P(X ≤ min(n_a, n_b))) for
    X ~ Binomial(n_a + n_b, ½).
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def verdict(interval: Interval, higher_is_better: bool = True) -> Verdict:
    """ "better" or "worse" only when the whole interval lies on one side of 0."""
    if interval.low > 0:
        return "better" if higher_is_better else "worse"
    if interval.high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable difference"
