import json

import pytest

from jobs.config import StoppingConfig
from jobs.report import load_run, report_json, report_rows, rich_table, stop_decision, write_report
from jobs.storage import RunStorage


def metrics(k, task, acc, margin, nll, losses, baseline=None):
    history = [
        {"step": i + 1, "loss": v, "rewards/margins": 0.1 * i, "rewards/accuracies": 0.5 + 0.1 * i}
        for i, v in enumerate(losses)
    ]
    m = {
        "iteration": k,
        "stage_seconds": {"generate": 10.0, "train": 20.0},
        "train": {
            "pairs": 100 * (k + 1),
            "steps": len(losses),
            "history": history,
            "final": history[-1],
            "selected": {"step": len(losses)},
            "evals": [],
        },
        "evaluation": {
            "model_version": k + 1,
            "task_metric": task,
            "generated_tokens": 20.0 + k,
            "selected_step": len(losses),
            "diagnostics": {"rewards/accuracies": acc, "rewards/margins": margin, "nll/real": nll, "gain/real": 0.2},
        },
    }
    if baseline:
        m["baseline"] = baseline
    return m


@pytest.fixture
def stored_run(tmp_path):
    storage = RunStorage(str(tmp_path))
    runs = [
        metrics(
            0,
            0.62,
            0.81,
            0.9,
            0.10,
            [0.693, 0.60, 0.55],
            baseline={"model_version": 0, "task_metric": 0.55, "generated_tokens": 19.0, "nll/real": 0.12},
        ),
        metrics(1, 0.66, 0.58, 0.05, 0.09, [0.693, 0.66]),
    ]
    for m in runs:
        storage.write_json(storage.iteration_path(m["iteration"], "metrics.json"), m)
    storage.write_json(
        storage.path("baselines", "continued_sft", "metrics.json"),
        {"task_metric": 0.60, "generated_tokens": 19.5, "nll/real": 0.11, "train": {"steps": 5}},
    )
    return tmp_path


def test_rows_agree_with_the_stored_metrics(stored_run):
    rows = report_rows(load_run(str(stored_run)))
    assert [r["model"] for r in rows] == [
        "SFT",
        "SPIN iteration 0",
        "SPIN iteration 1",
        "continued SFT (equal compute)",
    ]
    sft, it0, it1, cont = rows
    assert sft["task_metric"] == 0.55 and sft["nll/real"] == 0.12
    assert it0["task_metric"] == 0.62 and it0["delta/task_metric"] == pytest.approx(0.07)
    assert it1["reward_accuracy"] == 0.58 and it1["reward_margin"] == 0.05 and it1["pairs"] == 200
    assert it1["delta/nll/real"] == pytest.approx(-0.03) and it1["train_loss"] == 0.66
    assert cont["delta/task_metric"] == pytest.approx(0.05) and cont["steps"] == 5


def test_json_and_pngs_are_written(stored_run, tmp_path):
    record = load_run(str(stored_run))
    paths = write_report(record, tmp_path / "report")
    assert sorted(p.name for p in paths) == [
        "accuracies.png",
        "loss.png",
        "margins.png",
        "report.json",
        "task_metric.png",
    ]
    for p in paths:
        assert p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report_rows(record)))
    assert [len(i["history"]) for i in saved["iterations"]] == [3, 2]
    assert report_json(record)["rows"][2]["model"] == "SPIN iteration 1"


def test_table_shows_values_and_changes(stored_run):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(rich_table(report_rows(load_run(str(stored_run)))))
    text = console.export_text()
    assert "0.620 (+0.070)" in text and "0.550" in text and "0.600 (+0.050)" in text


def test_stop_decision_reads_the_iterations_evaluations(stored_run):
    record = load_run(str(stored_run))
    off = stop_decision(StoppingConfig(), record.iterations)
    assert not off.stop
    on = stop_decision(
        StoppingConfig(enabled=True, accuracy_band=0.1, margin_tolerance=0.1, patience=0), record.iterations
    )
    assert on.stop and "converged" in on.reason
    assert not stop_decision(StoppingConfig(enabled=True, patience=0), record.iterations[:1]).stop
