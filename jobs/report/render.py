"""The run report rendered: a rich table for the terminal, report.json and PNG plots.

spin report RUN_ID_OR_STORAGE_URI [--out DIR]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.report import plots
from jobs.report.results import REPORTED_SPLIT, SFT_ROW, RunRecord, comparisons, report_rows


def report_json(record: RunRecord) -> dict[str, Any]:
    return {
        "storage_uri": record.storage_uri,
        "split": REPORTED_SPLIT,
        "rows": report_rows(record),
        "comparisons": [c.as_json() for c in comparisons(record)],
        "continued_sft_candidates": (
            [c.model_dump() for c in record.continued_sft.candidates] if record.continued_sft else []
        ),
        "stopped": record.stopped.model_dump() if record.stopped else None,
        "iterations": [
            {
                "iteration": m.iteration,
                "stage_seconds": m.stage_seconds,
                "selected": m.train.selected.model_dump() if m.train.selected else None,
                "evals": [e.model_dump() for e in m.train.evals],
                "history": [h.model_dump() for h in m.train.history],
            }
            for m in record.iterations
        ],
    }


def write_report(record: RunRecord, out_dir: str | Path) -> list[Path]:
    """report.json and the PNG plots under `out_dir`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report_json(record), indent=1, default=str))
    for name, draw in plots.PLOTS.items():
        path = out / f"{name}.png"
        path.write_bytes(draw(record))
        written.append(path)
    return written


COLUMNS = [
    ("test prompts", "prompts"),
    ("task metric", "task_metric"),
    ("real NLL", "nll/real"),
    ("answer tokens", "answer_tokens"),
    ("valid. metric", "validation_task_metric"),
    ("reward acc", "reward_accuracy"),
    ("reward margin", "reward_margin"),
    ("Δ logp real", "gain/real"),
    ("pairs", "pairs"),
    ("steps", "steps"),
]


def rich_table(rows: list[dict[str, Any]], title: str = "SPIN report") -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model", justify="left")
    for header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [row["model"]]
        for _, key in COLUMNS:
            value, delta = row.get(key), row.get(f"delta/{key}")
            if value is None:
                cells.append("")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                shown_delta = delta is not None and row["model"] != SFT_ROW
                cells.append(f"{value:.3f}" + (f" ({delta:+.3f})" if shown_delta else ""))
        table.add_row(*cells)
    return table


def verdict_lines(record: RunRecord) -> list[str]:
    """The paired comparisons, one line each, as a person reads them."""
    return [c.line() for c in comparisons(record)]


def selection_lines(record: RunRecord) -> list[str]:
    """Which checkpoint each iteration published and why: a SPIN model equal to the one it started from is a
    result (no trained checkpoint beat it on the validation split), and the line says so with the scores."""
    lines = []
    for m in record.iterations:
        t, selected = m.train, m.train.selected
        if selected is None:
            lines.append(f"iteration {m.iteration} published its last step ({t.steps}); no checkpoint selection")
            continue
        metric = "exact match" if selected.task_metric is not None else "real NLL"
        scores = ", ".join(
            f"{e.task_metric if e.task_metric is not None else e.nll_real:.3f} at step {e.step}" for e in t.evals
        )
        start = " (the model it started from: no trained checkpoint beat it)" if selected.step == 0 else ""
        stopped = f"; stopped early at step {t.stopped_early_at}" if t.stopped_early_at is not None else ""
        lines.append(
            f"iteration {m.iteration} published step {selected.step} of {t.steps}{start}; validation {metric} "
            f"{scores}{stopped}"
        )
    return lines
