"""SPIN diagnostics, reduced as sums so that every rank's pairs count (the official code logs rank 0 only).

The names, in `METRIC_NAMES` order, are explained in jobs/spin/names.py.
"""

from __future__ import annotations

import re

import torch

from jobs.spin.loss import SpinLossOutput
from jobs.spin.names import METRIC_NAMES


def pair_metric_sums(
    out: SpinLossOutput,
    policy_real: torch.Tensor,
    policy_generated: torch.Tensor,
    beta: float,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sums over the pairs of a batch (those where `select` is true, when given), in METRIC_NAMES order, followed
    by the pair count.

    Returns a float64 vector of length len(METRIC_NAMES) + 1, ready for an all-reduce(SUM).
    """
    columns = (
        out.losses.detach(),
        out.reward_real,
        out.reward_generated,
        out.reward_real - out.reward_generated,
        (out.reward_real > out.reward_generated).to(out.margin.dtype),
        policy_real.detach(),
        policy_generated.detach(),
        out.reward_real / beta,
        out.reward_generated / beta,
        out.margin.detach(),
    )
    weight = torch.ones_like(out.margin, dtype=torch.float64) if select is None else select.to(torch.float64)
    sums = [(c.to(torch.float64) * weight).sum() for c in columns]
    sums.append(weight.sum())
    return torch.stack(sums)


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Means from a (possibly all-reduced) vector made by pair_metric_sums."""
    count = float(sums[-1])
    if count <= 0:
        raise ValueError("no pairs were reduced: the metric sums have a count of 0")
    return {name: float(value) / count for name, value in zip(METRIC_NAMES, sums[:-1].tolist(), strict=True)}


def response_nll(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of responses from their summed log-probs: −Σ log p(y) / Σ |y|.

    The SFT loss, and the `nll/real` every model is evaluated by."""
    return -logps.sum() / tokens.sum()


def answer_match(predictions: list[str], references: list[str], pattern: str) -> tuple[float, int]:
    """Exact match of final answers: the first capture of `pattern` in each prediction against the one in its
    reference (the real response). References without an answer are left out; returns (share, counted)."""
    regex = re.compile(pattern)
    hits = counted = 0
    for prediction, reference in zip(predictions, references, strict=True):
        expected = regex.search(reference)
        if expected is None:
            continue
        counted += 1
        found = regex.search(prediction)
        hits += found is not None and found.group(1) == expected.group(1)
    return (hits / counted if counted else float("nan")), counted
