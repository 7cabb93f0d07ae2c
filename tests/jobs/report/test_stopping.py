import json

from jobs.config import StoppingConfig
from jobs.report.results import load_run
from jobs.report.stopping import StopRecord, record_stop, stop_decision
from jobs.storage import RunStorage


def test_stop_decision_reads_the_iterations_evaluations(stored_run):
    record = load_run(str(stored_run))
    off = stop_decision(StoppingConfig(), record.iterations)
    assert not off.stop
    on = stop_decision(
        StoppingConfig(enabled=True, accuracy_band=0.1, margin_tolerance=0.1, patience=0), record.iterations
    )
    assert on.stop and "converged" in on.reason
    assert not stop_decision(StoppingConfig(enabled=True, patience=0), record.iterations[:1]).stop


def test_a_stop_is_recorded_once_the_same_way_for_every_writer(tmp_path):
    storage = RunStorage(str(tmp_path))
    record = record_stop(storage, 3, "converged")
    assert json.loads((tmp_path / "stopped.json").read_text()) == {"after_iteration": 3, "reason": "converged"}
    assert load_run(str(tmp_path)).stopped == record == StopRecord(after_iteration=3, reason="converged")
