"""The run report: one row per model, like the paper's Table 4, plus plots and a JSON file.

    spin report RUN_ID_OR_STORAGE_URI [--out DIR]

Rows: the SFT model (iteration 0's starting point), the model each iteration produced, and, when trained,
continued SFT at equal compute. Each metric is shown with its change against the SFT model. Everything is
read from the run's storage, so the report works for runs started by the control plane or headless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.config import SpinConfig
from jobs.spin.stopping import IterationScores, StopDecision, StoppingRule, should_stop
from jobs.storage import RunStorage

CONTINUED_SFT = "baselines/continued_sft"
STOP_FILE = "stopped.json"


@dataclass
class RunRecord:
    storage_uri: str
    iterations: list[dict[str, Any]]  # iter_<k>/metrics.json, in order, for the finished iterations
    continued_sft: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)


def load_run(storage_uri: str) -> RunRecord:
    storage = RunStorage(storage_uri)
    iterations = []
    while storage.exists(path := storage.iteration_path(len(iterations), "metrics.json")):
        iterations.append(dict(storage.read_json(path)))
    baseline_path = storage.path(CONTINUED_SFT, "metrics.json")
    stop_path = storage.path(STOP_FILE)
    return RunRecord(
        storage_uri=storage.uri,
        iterations=iterations,
        continued_sft=storage.read_json(baseline_path) if storage.exists(baseline_path) else None,
        stopped=storage.read_json(stop_path) if storage.exists(stop_path) else None,
    )


def stop_decision(stopping: Any, iterations: list[dict[str, Any]]) -> StopDecision:
    """Apply the config's stopping rule to the evaluations of the iterations finished so far."""
    if not stopping.enabled:
        return StopDecision(False)
    history = []
    for m in iterations:
        evaluation = m.get("evaluation") or {}
        diagnostics = evaluation.get("diagnostics") or {}
        if "rewards/accuracies" not in diagnostics:
            return StopDecision(False)  # the rule needs held-out diagnostics of every iteration
        history.append(
            IterationScores(
                diagnostics["rewards/accuracies"], diagnostics["rewards/margins"], evaluation.get("task_metric")
            )
        )
    baseline = (iterations[0].get("baseline") or {}).get("task_metric") if iterations else None
    rule = StoppingRule(stopping.accuracy_band, stopping.margin_tolerance, stopping.patience, stopping.min_iterations)
    return should_stop(history, rule, baseline)


def _row(
    label: str, scores: dict[str, Any] | None, diagnostics: dict[str, Any] | None, train: dict[str, Any] | None
) -> dict[str, Any]:
    scores, diagnostics, train = scores or {}, diagnostics or {}, train or {}
    final = train.get("final") or {}
    return {
        "model": label,
        "task_metric": scores.get("task_metric"),
        "generated_tokens": scores.get("generated_tokens"),
        "nll/real": diagnostics.get("nll/real", scores.get("nll/real")),
        "reward_accuracy": diagnostics.get("rewards/accuracies"),
        "reward_margin": diagnostics.get("rewards/margins"),
        "gain/real": diagnostics.get("gain/real"),
        "train_loss": final.get("loss"),
        "pairs": train.get("pairs"),
        "steps": train.get("steps"),
        "selected_step": scores.get("selected_step"),
    }


def report_rows(record: RunRecord) -> list[dict[str, Any]]:
    """One row per model, with `delta/<metric>` against the SFT model where both are known."""
    rows = []
    if record.iterations and record.iterations[0].get("baseline"):
        rows.append(_row("SFT", record.iterations[0]["baseline"], None, None))
    for m in record.iterations:
        evaluation = m.get("evaluation") or {}
        rows.append(_row(f"SPIN iteration {m['iteration']}", evaluation, evaluation.get("diagnostics"), m.get("train")))
    if record.continued_sft:
        rows.append(
            _row("continued SFT (equal compute)", record.continued_sft, None, record.continued_sft.get("train"))
        )
    sft = rows[0] if rows and rows[0]["model"] == "SFT" else None
    for row in rows:
        for key in ("task_metric", "nll/real", "generated_tokens"):
            if sft is not None and row[key] is not None and sft[key] is not None:
                row[f"delta/{key}"] = row[key] - sft[key]
    return rows


def report_json(record: RunRecord) -> dict[str, Any]:
    return {
        "storage_uri": record.storage_uri,
        "rows": report_rows(record),
        "stopped": record.stopped,
        "iterations": [
            {
                "iteration": m["iteration"],
                "stage_seconds": m.get("stage_seconds"),
                "selected": (m.get("train") or {}).get("selected"),
                "evals": (m.get("train") or {}).get("evals"),
                "history": (m.get("train") or {}).get("history"),
            }
            for m in record.iterations
        ],
    }


def write_report(record: RunRecord, out_dir: str | Path) -> list[Path]:
    """report.json and the PNG plots under `out_dir`; returns the paths written."""
    from jobs import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report_json(record), indent=1, default=str))
    for name, draw in plots.PLOTS.items():
        path = out / f"{name}.png"
        path.write_bytes(draw(record))
        written.append(path)
    return written


def rich_table(rows: list[dict[str, Any]], title: str = "SPIN report") -> Any:
    from rich.table import Table

    table = Table(title=title)
    columns = [
        ("model", None),
        ("task metric", "task_metric"),
        ("real NLL", "nll/real"),
        ("answer tokens", "generated_tokens"),
        ("reward acc", "reward_accuracy"),
        ("reward margin", "reward_margin"),
        ("Δ logp real", "gain/real"),
        ("pairs", "pairs"),
        ("steps", "steps"),
    ]
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "model" else "right")
    for row in rows:
        cells = [row["model"]]
        for _, key in columns[1:]:
            value, delta = row.get(key), row.get(f"delta/{key}")
            if value is None:
                cells.append("")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(
                    f"{value:.3f}" + (f" ({delta:+.3f})" if delta is not None and row["model"] != "SFT" else "")
                )
        table.add_row(*cells)
    return table


def load_config(storage_uri: str) -> SpinConfig | None:
    storage = RunStorage(storage_uri)
    path = storage.path("config.yaml")
    if not storage.exists(path):
        return None
    with storage.fs.open_input_stream(path) as f:
        return SpinConfig.from_yaml_text(f.read().decode(), source=storage.uri_of(path))
