"""The stopping rule applied to a run's finished iterations, and the record of why a run stopped."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from jobs.config import StoppingConfig
from jobs.metrics import IterationMetrics
from jobs.spin.stopping import IterationScores, StopDecision, StoppingRule, should_stop
from jobs.storage import RunStorage


class StopRecord(BaseModel):
    """stopped.json."""

    model_config = ConfigDict(frozen=True)

    after_iteration: int
    reason: str


def stop_decision(stopping: StoppingConfig, iterations: list[IterationMetrics]) -> StopDecision:
    """Apply the config's stopping rule to the evaluations of the iterations finished so far."""
    if not stopping.enabled:
        return StopDecision(False)
    history = []
    for m in iterations:
        diagnostics = m.evaluation.diagnostics if m.evaluation else None
        if m.evaluation is None or diagnostics is None:
            return StopDecision(False)  # the rule needs held-out diagnostics of every iteration
        # Like every choice, the rule reads the validation split (the test split is only reported).
        task = m.evaluation.validation.task_metric if m.evaluation.validation else None
        history.append(IterationScores(diagnostics.rewards_accuracies, diagnostics.rewards_margins, task))
    first = iterations[0].baseline if iterations else None
    baseline = first.validation.task_metric if first and first.validation else None
    rule = StoppingRule(stopping.accuracy_band, stopping.margin_tolerance, stopping.patience, stopping.min_iterations)
    return should_stop(history, rule, baseline)


def record_stop(storage: RunStorage, after_iteration: int, reason: str) -> StopRecord:
    """Write stopped.json: headless runs and the control plane record a stop the same way."""
    record = StopRecord(after_iteration=after_iteration, reason=reason)
    storage.write_json(storage.stopped(), record.model_dump())
    return record
