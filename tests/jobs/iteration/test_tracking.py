"""What reaches the tracker, and the config that turns it on, without a tracking server (the real server is in
tests/integration/test_iteration.py)."""

import math

import pytest
from pydantic import ValidationError

from jobs.config import TrackingConfig
from jobs.iteration.tracking import numeric_metrics


def test_only_finite_numbers_reach_the_tracker_nested_names_joined():
    step = {
        "loss": 0.69,
        "epoch": 1,
        "grad_norm": None,
        "fresh": {"loss": 0.5, "margin": math.nan},
        "carried": None,
        "selected": True,
        "path": "/tmp/x",
        "eval_rewards/accuracies": 0.75,
    }
    assert numeric_metrics(step) == {"loss": 0.69, "epoch": 1.0, "fresh/loss": 0.5, "eval_rewards/accuracies": 0.75}


def test_mlflow_without_a_uri_fails_at_load():
    assert TrackingConfig().backend == "none"
    with pytest.raises(ValidationError, match="needs tracking.uri"):
        TrackingConfig(backend="mlflow")
    assert TrackingConfig(backend="mlflow", uri="http://127.0.0.1:5000").experiment == "spin"
