"""A run's results read back from its storage: one row per model, like the paper's Table 4, each model's test
scores compared prompt by prompt with the SFT model's and continued SFT's.

Rows: the SFT model (iteration 0's starting point), the model each iteration produced, and, when trained,
continued SFT at equal compute with its lr chosen on the validation split. Everything is read from the run's
storage, so the report works for runs started by the control plane or headless. Scores are the test split's;
the validation split only chose (checkpoints, the baseline's lr).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from jobs.metrics import BaselineMetrics, Evaluation, IterationMetrics, SplitScores, TrainSummary
from jobs.report.comparisons import Comparison, compare
from jobs.report.stopping import StopRecord
from jobs.storage import CONTINUED_SFT, SFT, RunStorage

SFT_ROW = "SFT"
CONTINUED_SFT_ROW = "continued SFT"
REPORTED_SPLIT = "test"


@dataclass(frozen=True)
class ModelResult:
    """One evaluated model of the run: its summary and, when stored, its per-prompt results."""

    label: str
    evaluation: Evaluation
    results: pa.Table | None
    train: TrainSummary | None = None


@dataclass(frozen=True)
class RunRecord:
    storage_uri: str
    iterations: list[IterationMetrics]  # the finished iterations, in order
    continued_sft: BaselineMetrics | None = None
    stopped: StopRecord | None = None
    models: list[ModelResult] = field(default_factory=list)


def _results(storage: RunStorage, folder: str) -> pa.Table | None:
    return storage.read_table(folder) if storage.is_complete(folder) else None


def load_run(storage_uri: str, with_results: bool = True) -> RunRecord:
    """`with_results`: read each model's per-prompt results too (the summaries alone suffice to choose a model)."""
    storage = RunStorage(storage_uri)
    iterations: list[IterationMetrics] = []
    while storage.exists(path := storage.metrics(len(iterations))):
        iterations.append(IterationMetrics.model_validate(storage.read_json(path)))
    baseline_path, stopped = storage.baseline(CONTINUED_SFT, "metrics.json"), storage.stopped()
    continued = (
        BaselineMetrics.model_validate(storage.read_json(baseline_path)) if storage.exists(baseline_path) else None
    )

    def results(folder: str) -> pa.Table | None:
        return _results(storage, folder) if with_results else None

    models = []
    if iterations and iterations[0].baseline:
        models.append(ModelResult(SFT_ROW, iterations[0].baseline, results(storage.baseline(SFT, "evaluation"))))
    for m in iterations:
        if m.evaluation:
            models.append(
                ModelResult(
                    f"SPIN iteration {m.iteration}", m.evaluation, results(storage.evaluation(m.iteration)), m.train
                )
            )
    if continued:
        models.append(ModelResult(CONTINUED_SFT_ROW, continued, results(storage.baseline(CONTINUED_SFT, "evaluation"))))
    return RunRecord(
        storage_uri=storage.uri,
        iterations=iterations,
        continued_sft=continued,
        stopped=StopRecord.model_validate(storage.read_json(stopped)) if storage.exists(stopped) else None,
        models=models,
    )


def best_model(record: RunRecord) -> ModelResult | None:
    """The run's best model so far on the validation split (the SFT model or an iteration's; continued SFT is a
    baseline, not one of the run's models): the highest task metric, ties broken by the real answers' lower NLL,
    where every candidate has a task metric; the lowest NLL otherwise. A later model must beat an earlier one."""
    candidates = [
        (m, m.evaluation.validation)
        for m in record.models
        if m.label != CONTINUED_SFT_ROW and m.evaluation.validation is not None
    ]
    if not candidates:
        return None
    scored = all(v.task_metric is not None for _, v in candidates)

    def key(candidate: tuple[ModelResult, SplitScores]) -> tuple[float, ...]:
        v = candidate[1]
        return (v.task_metric or 0.0, -v.nll) if scored else (-v.nll,)

    return max(candidates, key=key)[0]  # max keeps the first of equals


def comparisons(record: RunRecord, split: str = REPORTED_SPLIT) -> list[Comparison]:
    """Each SPIN model against the SFT model and against continued SFT, and continued SFT against SFT."""
    stored = {m.label: m.results for m in record.models if m.results is not None}
    out: list[Comparison] = []
    for label, results in stored.items():
        for baseline in (SFT_ROW, CONTINUED_SFT_ROW):
            if label not in (SFT_ROW, baseline) and baseline in stored:
                out += compare(label, results, baseline, stored[baseline], split)
    return out


def report_rows(record: RunRecord, split: str = REPORTED_SPLIT) -> list[dict[str, Any]]:
    """One row per model: its scores on `split`, training's headline numbers, and `delta/<metric>` against SFT."""
    rows: list[dict[str, Any]] = []
    for m in record.models:
        scores = getattr(m.evaluation, split)
        diagnostics, final = m.evaluation.diagnostics, m.train.final if m.train else None
        rows.append(
            {
                "model": m.label,
                "prompts": scores.prompts if scores else None,
                "task_metric": scores.task_metric if scores else None,
                "nll/real": scores.nll if scores else None,
                "answer_tokens": scores.answer_tokens if scores else None,
                "validation_task_metric": m.evaluation.validation.task_metric if m.evaluation.validation else None,
                "reward_accuracy": diagnostics.rewards_accuracies if diagnostics else None,
                "reward_margin": diagnostics.rewards_margins if diagnostics else None,
                "gain/real": diagnostics.gain_real if diagnostics else None,
                "train_loss": final.loss if final else None,
                "pairs": m.train.pairs if m.train else None,
                "steps": m.train.steps if m.train else None,
                "selected_step": m.evaluation.selected_step,
            }
        )
    if record.continued_sft and rows:
        rows[-1] |= {
            "steps": record.continued_sft.train.steps,
            "learning_rate": record.continued_sft.train.learning_rate,
        }
    sft = rows[0] if rows and rows[0]["model"] == SFT_ROW else None
    for row in rows:
        for key in ("task_metric", "nll/real", "answer_tokens"):
            if sft is not None and row[key] is not None and sft[key] is not None:
                row[f"delta/{key}"] = row[key] - sft[key]
    return rows
