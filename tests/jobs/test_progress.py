import json
import logging

import pytest

from jobs.progress import LogSink, Progress, StatusSink, shown_info
from jobs.storage import RunStorage


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, stage, total):
        self.events.append(("start", stage, total))

    def update(self, stage, completed, total, info):
        self.events.append(("update", stage, completed, total, info))

    def end(self, stage, seconds, error):
        self.events.append(("end", stage, seconds is not None, error))


def test_stages_fan_out_to_every_sink_and_keep_their_times():
    a, b = Recorder(), Recorder()
    progress = Progress(a, b)
    with progress.stage("generate", total=4) as stage:
        stage.update(2, loss=0.5)
        stage.update(4)
    with progress.stage("score") as stage:
        stage.already_done()
    assert (
        a.events
        == b.events
        == [
            ("start", "generate", 4),
            ("update", "generate", 2, 4, {"loss": 0.5}),
            ("update", "generate", 4, 4, {}),
            ("end", "generate", True, None),
            ("start", "score", None),
            ("end", "score", False, None),  # done in an earlier attempt: not re-timed
        ]
    )
    assert set(progress.seconds) == {"generate"}


def test_a_stage_records_where_its_time_went():
    import time

    progress = Progress()
    with progress.stage("train") as stage:
        stage.part("checkpoints", 1.23456)
        stage.part("checkpoints", 1.0)  # a part done again adds up
        time.sleep(0.05)
        stage.reached("workers_ready")  # now, from the stage's start
        stage.reached("first_step", at=stage.started_at + 0.02)  # when it happened, on another process's clock
    assert progress.parts["train/checkpoints"] == 2.235
    assert 0.05 <= progress.parts["train/workers_ready_at"] <= progress.seconds["train"]
    assert progress.parts["train/first_step_at"] == 0.02


def test_a_failing_stage_reports_its_error_and_raises():
    sink = Recorder()
    with pytest.raises(ValueError, match="bad row"), Progress(sink).stage("generate"):
        raise ValueError("bad row")
    assert sink.events[-1] == ("end", "generate", True, "ValueError: bad row")


def test_status_file_follows_the_stage_and_keeps_finished_times_across_attempts(tmp_path):
    storage = RunStorage(str(tmp_path))
    status = StatusSink(storage, 0, every_s=3600)  # only forced writes: start, end, a new total, the last unit
    progress = Progress(status)
    with progress.stage("generate", total=10) as stage:
        stage.update(3)  # throttled: not written
        assert json.loads((tmp_path / "iter_0" / "status.json").read_text())["completed"] == 0
        stage.update(10, tokens_per_s=12.5)
    written = json.loads((tmp_path / "iter_0" / "status.json").read_text())
    assert (written["stage"], written["completed"], written["total"]) == ("generate", 10, 10)
    assert written["info"] == {"tokens_per_s": 12.5} and "generate" in written["stage_seconds"]
    again = StatusSink(storage, 0)  # a retried job keeps the finished stage's time
    assert again.status["stage_seconds"] == written["stage_seconds"]


def test_log_sink_writes_structured_records(caplog):
    caplog.set_level(logging.INFO, logger="spin")
    with Progress(LogSink(every_s=0)).stage("train", total=2) as stage:
        stage.update(1, loss=0.69)
    records = [(r.getMessage(), getattr(r, "stage", None), getattr(r, "loss", None)) for r in caplog.records]
    assert records[:2] == [("stage started", "train", None), ("progress", "train", 0.69)]
    assert records[-1][:2] == ("stage ended", "train")


def test_a_progress_bar_shows_the_headline_metrics_by_their_names():
    info = {"loss": 0.6931, "rewards/accuracies": 0.5, "gain/real": 0.1, "tokens_per_s": 1234.5}
    assert shown_info(info) == "loss 0.6931  rewards/accuracies 0.5  tokens_per_s 1234"
