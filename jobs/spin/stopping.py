"""When a SPIN run may stop by itself (none of the reference implementations has a rule).

SPIN's fixed point is p_θ = p_data: the model can no longer tell its own answers from the human ones, so
on held-out pairs its implicit-reward accuracy is near 50% and the margin near 0. A run also stops when the
task metric has not improved for `patience` iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class IterationScores:
    """What the rule reads from an iteration's held-out evaluation (of the model it produced)."""

    reward_accuracy: float
    margin: float
    task_metric: float | None = None


@dataclass(frozen=True)
class StoppingRule:
    accuracy_band: float = 0.05  # |accuracy − 0.5| ≤ band ...
    margin_tolerance: float = 0.1  # ... and |margin| ≤ tolerance
    patience: int = 2  # iterations without a better task metric
    min_iterations: int = 1
    min_improvement: float = 0.0


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    reason: str | None = None


def should_stop(
    history: Sequence[IterationScores], rule: StoppingRule, baseline_task_metric: float | None = None
) -> StopDecision:
    """Decide after the last iteration of `history` (iterations in order) whether to stop the run.

    `baseline_task_metric` is the SFT model's score, which the first iterations must beat.
    """
    if len(history) < rule.min_iterations or not history:
        return StopDecision(False)
    last = history[-1]
    if abs(last.reward_accuracy - 0.5) <= rule.accuracy_band and abs(last.margin) <= rule.margin_tolerance:
        return StopDecision(
            True,
            f"converged: held-out reward accuracy {last.reward_accuracy:.3f} is within {rule.accuracy_band} of 0.5 "
            f"and the margin {last.margin:+.3f} within {rule.margin_tolerance} of 0: the model can no longer tell "
            "its own answers from the human ones",
        )
    scores = [h.task_metric for h in history]
    if rule.patience > 0 and all(s is not None for s in scores) and len(scores) >= rule.patience:
        before = ([baseline_task_metric] if baseline_task_metric is not None else []) + scores[: -rule.patience]
        if before:
            best_before = max(s for s in before if s is not None)
            recent_best = max(s for s in scores[-rule.patience :] if s is not None)
            if recent_best <= best_before + rule.min_improvement:
                return StopDecision(
                    True,
                    f"the task metric has not improved for {rule.patience} iteration(s): best {best_before:.4f} "
                    f"before, {recent_best:.4f} since",
                )
    return StopDecision(False)
