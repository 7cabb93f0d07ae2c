import json

from jobs.report.render import report_json, rich_table, selection_lines, verdict_lines, write_report
from jobs.report.results import load_run, report_rows


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
    assert [len(i["history"]) for i in saved["iterations"]] == [2, 2]
    assert report_json(record)["rows"][2]["model"] == "SPIN iteration 1"
    assert saved["split"] == "test" and len(saved["comparisons"]) == 10
    assert [c["learning_rate"] for c in saved["continued_sft_candidates"]] == [1e-4, 1e-3]


def test_table_shows_values_and_changes(stored_run):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(rich_table(report_rows(load_run(str(stored_run)))))
    text = console.export_text()
    assert "0.650 (+0.100)" in text and "0.550" in text and "0.600 (+0.050)" in text


def test_verdict_lines_name_both_models_the_interval_and_the_verdict(stored_run):
    lines = verdict_lines(load_run(str(stored_run)))
    assert len(lines) == 10
    assert any(line.startswith("SPIN iteration 1 vs continued SFT, exact match on 20 test prompts") for line in lines)
    assert all(line.endswith(("better", "worse", "no detectable difference")) for line in lines)


def test_selection_lines_say_when_an_iteration_published_the_model_it_started_from(stored_run):
    from jobs.storage import RunStorage
    from tests.factories import step_metrics

    storage = RunStorage(str(stored_run))
    metrics = json.loads((stored_run / "iter_1" / "metrics.json").read_text())
    evals = [(0, 0.944), (50, 0.932), (100, 0.934)]
    train = metrics["train"]
    train["evals"] = [step_metrics() | {"step": s, "nll/real": 0.02, "task_metric": v} for s, v in evals]
    train["selected"] = train["evals"][0] | {"score": 0.944}
    train["steps"], train["stopped_early_at"] = 100, 100
    storage.write_json(storage.metrics(1), metrics)
    first, second = selection_lines(load_run(str(stored_run)))
    assert first.startswith("iteration 0 published step 2 of 2; validation exact match")
    assert second == (
        "iteration 1 published step 0 of 100 (the model it started from: no trained checkpoint beat it); validation "
        "exact match 0.944 at step 0, 0.932 at step 50, 0.934 at step 100; stopped early at step 100"
    )
