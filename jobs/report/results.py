"""A run's results read back from its storage: one row per model, like the paper's Table 4.

Rows: the SFT model (iteration 0's starting point), the model each iteration produced, and, when trained,
continued SFT at equal compute. Each metric comes with its change against the SFT model. Everything is read
from the run's storage, so the report works for runs started by the control plane or headless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.metrics import BaselineMetrics, Evaluation, HeldOutEval, IterationMetrics, TrainSummary
from jobs.report.stopping import StopRecord
from jobs.storage import CONTINUED_SFT, RunStorage

SFT_ROW = "SFT"
CONTINUED_SFT_ROW = "continued SFT (equal compute)"


@dataclass(frozen=True)
class RunRecord:
    storage_uri: str
    iterations: list[IterationMetrics]  # the finished iterations, in order
    continued_sft: BaselineMetrics | None = None
    stopped: StopRecord | None = None


def load_run(storage_uri: str) -> RunRecord:
    storage = RunStorage(storage_uri)
    iterations: list[IterationMetrics] = []
    while storage.exists(path := storage.metrics(len(iterations))):
        iterations.append(IterationMetrics.model_validate(storage.read_json(path)))
    baseline, stopped = storage.baseline(CONTINUED_SFT, "metrics.json"), storage.stopped()
    return RunRecord(
        storage_uri=storage.uri,
        iterations=iterations,
        continued_sft=BaselineMetrics.model_validate(storage.read_json(baseline)) if storage.exists(baseline) else None,
        stopped=StopRecord.model_validate(storage.read_json(stopped)) if storage.exists(stopped) else None,
    )


def _row(
    label: str, scores: Evaluation | None, diagnostics: HeldOutEval | None, train: TrainSummary | None
) -> dict[str, Any]:
    final = train.final if train else None
    return {
        "model": label,
        "task_metric": scores.task_metric if scores else None,
        "generated_tokens": scores.generated_tokens if scores else None,
        "nll/real": diagnostics.nll_real if diagnostics else (scores.nll_real if scores else None),
        "reward_accuracy": diagnostics.rewards_accuracies if diagnostics else None,
        "reward_margin": diagnostics.rewards_margins if diagnostics else None,
        "gain/real": diagnostics.gain_real if diagnostics else None,
        "train_loss": final.loss if final else None,
        "pairs": train.pairs if train else None,
        "steps": train.steps if train else None,
        "selected_step": scores.selected_step if scores else None,
    }


def report_rows(record: RunRecord) -> list[dict[str, Any]]:
    """One row per model, with `delta/<metric>` against the SFT model where both are known."""
    rows = []
    if record.iterations and record.iterations[0].baseline:
        rows.append(_row(SFT_ROW, record.iterations[0].baseline, None, None))
    for m in record.iterations:
        diagnostics = m.evaluation.diagnostics if m.evaluation else None
        rows.append(_row(f"SPIN iteration {m.iteration}", m.evaluation, diagnostics, m.train))
    if record.continued_sft:
        row = _row(CONTINUED_SFT_ROW, record.continued_sft, None, None)
        rows.append(row | {"steps": record.continued_sft.train.steps})
    sft = rows[0] if rows and rows[0]["model"] == SFT_ROW else None
    for row in rows:
        for key in ("task_metric", "nll/real", "generated_tokens"):
            if sft is not None and row[key] is not None and sft[key] is not None:
                row[f"delta/{key}"] = row[key] - sft[key]
    return rows
