import json

from jobs.report.render import report_json, rich_table, verdict_lines, write_report
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
