import json

import pytest

from jobs.report.results import load_run, report_rows


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


def test_metrics_files_round_trip_with_their_names(stored_run):
    """The typed metrics.json keeps SPIN's names in the file and reads back equal."""
    record = load_run(str(stored_run))
    saved = json.loads((stored_run / "iter_1" / "metrics.json").read_text())
    assert saved["evaluation"]["diagnostics"]["rewards/accuracies"] == 0.58
    assert saved["train"]["final"]["loss"] == 0.66 and saved["train"]["final"] == saved["train"]["history"][-1]
    assert record.iterations[1].model_dump(mode="json") == saved
