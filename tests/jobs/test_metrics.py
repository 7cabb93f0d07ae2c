import pytest
from pydantic import ValidationError

from jobs.metrics import HeldOutEval, IterationMetrics, TrainSummary
from tests.factories import iteration_metrics, step_metrics


def test_spin_names_are_the_file_keys_and_attributes_use_underscores():
    point = HeldOutEval.model_validate(step_metrics(**{"rewards/accuracies": 0.6}) | {"step": 5, "nll/real": 0.2})
    assert point.rewards_accuracies == 0.6 and point.nll_real == 0.2
    dumped = point.model_dump()
    assert dumped["rewards/accuracies"] == 0.6 and "rewards_accuracies" not in dumped


def test_the_final_step_is_the_last_of_the_history():
    summary = TrainSummary(pairs=4, pairs_from_iterations=[0], steps=0)
    assert summary.final is None and summary.model_dump()["final"] is None
    metrics = iteration_metrics(0, task_metric=0.5, accuracy=0.6, margin=0.1, nll=0.2, losses=[0.69, 0.5])
    assert metrics.train.final.loss == 0.5 and metrics.train.final.step == 2


def test_keys_an_older_writer_left_are_read_past_but_missing_ones_are_errors():
    data = iteration_metrics(0, task_metric=0.5, accuracy=0.6, margin=0.1, nll=0.2, losses=[0.69]).model_dump()
    assert IterationMetrics.model_validate(data | {"retired_field": 1}).iteration == 0
    del data["train"]["pairs"]
    with pytest.raises(ValidationError, match="train.pairs"):
        IterationMetrics.model_validate(data)
