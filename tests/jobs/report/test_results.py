import json

import pytest

from jobs.report.results import ModelResult, RunRecord, best_model, comparisons, load_run, report_rows
from tests.factories import evaluation


def test_rows_agree_with_the_stored_metrics(stored_run):
    rows = report_rows(load_run(str(stored_run)))
    assert [r["model"] for r in rows] == ["SFT", "SPIN iteration 0", "SPIN iteration 1", "continued SFT"]
    sft, it0, it1, cont = rows
    assert sft["task_metric"] == 0.55 and sft["nll/real"] == 0.12 and sft["prompts"] == 10
    assert it0["task_metric"] == 0.65 and it0["delta/task_metric"] == pytest.approx(0.10)
    assert it1["reward_accuracy"] == 0.58 and it1["reward_margin"] == 0.05 and it1["pairs"] == 200
    assert it1["delta/nll/real"] == pytest.approx(-0.03) and it1["train_loss"] == 0.66
    assert cont["delta/task_metric"] == pytest.approx(0.05) and cont["steps"] == 5 and cont["learning_rate"] == 1e-4


def test_every_model_is_compared_prompt_by_prompt_with_sft_and_continued_sft(stored_run):
    found = {(c.model, c.baseline, c.metric): c for c in comparisons(load_run(str(stored_run)))}
    assert set(found) == {
        (model, baseline, metric)
        for model, baseline in [
            ("SPIN iteration 0", "SFT"),
            ("SPIN iteration 0", "continued SFT"),
            ("SPIN iteration 1", "SFT"),
            ("SPIN iteration 1", "continued SFT"),
            ("continued SFT", "SFT"),
        ]
        for metric in ("exact match", "real NLL")
    }
    two_more = found[("SPIN iteration 0", "SFT", "exact match")]
    # 2 of 20 test prompts right only for SPIN, none only for SFT: +0.10, McNemar p = 2 · C(2, 0) / 2² = 0.5.
    assert (two_more.prompts, two_more.split, two_more.value, two_more.baseline_value) == (20, "test", 0.65, 0.55)
    assert two_more.difference == pytest.approx(0.10) and two_more.p_value == 0.5
    assert two_more.low == 0.0 and two_more.verdict == "no detectable difference"  # the interval touches 0
    lower_nll = found[("SPIN iteration 1", "SFT", "real NLL")]
    assert lower_nll.difference == pytest.approx(-0.03) and lower_nll.p_value is None
    assert lower_nll.verdict == "better"  # every prompt's NLL fell: lower is better
    assert "SPIN iteration 0 vs SFT, exact match on 20 test prompts: 0.6500 vs 0.5500, +10.00 points" in two_more.line()


def test_metrics_files_round_trip_with_their_names(stored_run):
    """The typed metrics.json keeps SPIN's names in the file and reads back equal."""
    record = load_run(str(stored_run))
    saved = json.loads((stored_run / "iter_1" / "metrics.json").read_text())
    assert saved["evaluation"]["diagnostics"]["rewards/accuracies"] == 0.58
    assert saved["train"]["final"]["loss"] == 0.66 and saved["train"]["final"] == saved["train"]["history"][-1]
    assert record.iterations[1].model_dump(mode="json") == saved


def run_of(*models):
    """A run record holding the given (label, version, validation task metric, validation NLL) models."""
    from jobs.metrics import Evaluation

    return RunRecord(
        storage_uri="/tmp/r",
        iterations=[],
        models=[
            ModelResult(label, Evaluation.model_validate(evaluation(v, task, nll)), None)
            for label, v, task, nll in models
        ],
    )


def test_the_best_model_is_chosen_on_validation_and_a_later_one_must_beat_an_earlier_one(stored_run):
    best = best_model(load_run(str(stored_run)))
    assert best is not None and best.label == "SPIN iteration 1"  # 0.70 against 0.55 (SFT) and 0.65
    tied = run_of(("SFT", 0, 0.5, 0.2), ("SPIN iteration 0", 1, 0.5, 0.2), ("SPIN iteration 1", 2, 0.5, 0.1))
    assert best_model(tied).label == "SPIN iteration 1"  # equal task metric: the lower NLL
    equal = run_of(("SFT", 0, 0.5, 0.2), ("SPIN iteration 0", 1, 0.5, 0.2))
    assert best_model(equal).label == "SFT"
    worse = run_of(("SFT", 0, 0.6, 0.3), ("SPIN iteration 0", 1, 0.5, 0.1), ("continued SFT", -1, 0.9, 0.1))
    assert best_model(worse).label == "SFT"  # continued SFT is a baseline, not one of the run's models
    unscored = run_of(("SFT", 0, None, 0.3), ("SPIN iteration 0", 1, 0.5, 0.2), ("SPIN iteration 1", 2, None, 0.1))
    assert best_model(unscored).label == "SPIN iteration 1"  # a task metric missing somewhere: the NLL alone
    assert best_model(run_of()) is None
