"""SPIN diagnostics, reduced as sums so that every rank's pairs count (the official code logs rank 0 only).

Names follow TRL's DPO trainer with SPIN's vocabulary:

    loss                  mean per-pair loss
    rewards/real          β · (log pθ − log pref)(real)
    rewards/generated     β · (log pθ − log pref)(generated)
    rewards/margins       rewards/real − rewards/generated
    rewards/accuracies    share of pairs with rewards/real > rewards/generated
    logps/real            log pθ(real), summed over response tokens
    logps/generated       log pθ(generated)
    gain/real             log pθ(real) − log pref(real): negative means the human answers are being pushed down
    gain/generated        log pθ(generated) − log pref(generated)
    margin                gain/real − gain/generated (0 at the first step of an iteration)
"""

from __future__ import annotations

import re

import torch

from jobs.spin.loss import SpinLossOutput

METRIC_NAMES: tuple[str, ...] = (
    "loss",
    "rewards/real",
    "rewards/generated",
    "rewards/margins",
    "rewards/accuracies",
    "logps/real",
    "logps/generated",
    "gain/real",
    "gain/generated",
    "margin",
)


def pair_metric_sums(
    out: SpinLossOutput, policy_real: torch.Tensor, policy_generated: torch.Tensor, beta: float
) -> torch.Tensor:
    """Sums over the pairs of a batch, in METRIC_NAMES order, followed by the pair count.

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
    sums = [c.to(torch.float64).sum() for c in columns]
    sums.append(torch.tensor(float(out.losses.numel()), dtype=torch.float64, device=out.losses.device))
    return torch.stack(sums)


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Means from a (possibly all-reduced) vector made by pair_metric_sums."""
    count = float(sums[-1])
    if count <= 0:
        raise ValueError("no pairs were reduced: the metric sums have a count of 0")
    return {name: float(value) / count for name, value in zip(METRIC_NAMES, sums[:-1].tolist(), strict=True)}


def real_nll(policy_real: torch.Tensor, real_tokens: torch.Tensor) -> float:
    """Per-token negative log-likelihood of the real responses: −Σ log pθ(real) / Σ |real|."""
    return float(-policy_real.sum() / real_tokens.sum())


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
