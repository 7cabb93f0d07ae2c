"""Experiment tracking in MLflow: one tracker run per SPIN run, a global step across its iterations.

The Train workers report each optimizer step's metrics (already reduced over the ranks) with `ray.train.report`; a
Train V2 callback on the controller forwards them, so no worker needs to reach the tracker. The names are
metrics.json's (TRL's: `loss`, `rewards/accuracies`, `logps/real`, ...), held-out ones prefixed `eval_` as TRL
does. After each iteration the driver logs its summary (evaluation per split, stage seconds) and its model card.
A re-run of an iteration finds the same tracker run (tagged with the run's identity) and logs its steps again.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray.train import UserCallback

from jobs.config import SpinConfig
from jobs.metrics import IterationMetrics
from jobs.storage import RunStorage

RUN_TAG = "spin.run"
logger = logging.getLogger("spin")


def numeric_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (one level nested) metrics dict, nested names joined with '/'."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= numeric_metrics(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def step_offset(storage: RunStorage, k: int) -> int:
    """The global step iteration k's first step follows: every earlier iteration's optimizer steps."""
    steps = 0
    for j in range(k):
        if storage.exists(storage.metrics(j)):
            steps += IterationMetrics.model_validate(storage.read_json(storage.metrics(j))).train.steps
    return steps


class MLflowTracker:
    """The SPIN run's tracker run, found by its tag or created with the run's settings as parameters."""

    def __init__(self, cfg: SpinConfig):
        import mlflow

        assert cfg.tracking.uri is not None  # the config validator guarantees it
        self.uri, self.cfg = cfg.tracking.uri, cfg
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self.run_id = self._find_or_create()

    def _find_or_create(self) -> str:
        t = self.cfg.tracking
        experiment = self.client.get_experiment_by_name(t.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(t.experiment)
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{self.cfg.identity}'", max_results=1
        )
        if found:
            return str(found[0].info.run_id)
        run = self.client.create_run(experiment_id, run_name=self.cfg.name, tags={RUN_TAG: self.cfg.identity})
        for key, value in self._params().items():
            self.client.log_param(run.info.run_id, key, value)
        return str(run.info.run_id)

    def _params(self) -> dict[str, str]:
        c = self.cfg
        sections = {"train": c.train, "sampling": c.sampling, "pairs": c.pairs, "model": c.model}
        params = {"name": c.name, "fingerprint": c.fingerprint(), "prompts_per_iteration": str(c.prompts_per_iteration)}
        for section, settings in sections.items():
            for key, value in settings.model_dump(mode="json").items():
                if isinstance(value, str | int | float | bool) or value is None:
                    params[f"{section}.{key}"] = str(value)
        return params

    def callback(self, k: int) -> TrainMetricsCallback:
        return TrainMetricsCallback(self.uri, self.run_id, step_offset(RunStorage(self.cfg.storage_uri), k))

    def log_iteration(self, metrics: IterationMetrics, card_path: str | None) -> None:
        """Iteration k's summary at the global step where its training ended, and its model card."""
        step = step_offset(RunStorage(self.cfg.storage_uri), metrics.iteration) + metrics.train.steps
        summary: dict[str, Any] = {"iteration": metrics.iteration, "stage_seconds": dict(metrics.stage_seconds)}
        summary["generate"] = {"tokens_per_s": metrics.generate.tokens_per_s}
        if metrics.evaluation is not None:
            for split in ("validation", "test"):
                scores = getattr(metrics.evaluation, split)
                if scores is not None:
                    summary[f"iteration_eval_{split}"] = scores.model_dump()
        log_metrics(self.client, self.run_id, numeric_metrics(summary), step)
        if card_path is not None:
            self.client.log_artifact(self.run_id, card_path, artifact_path=f"iter_{metrics.iteration}")


def log_metrics(client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])


class TrainMetricsCallback(UserCallback):
    """On the Ray Train controller: each reported step's metrics to the tracker run, at the global step."""

    def __init__(self, uri: str, run_id: str, offset: int):
        self.uri, self.run_id, self.offset = uri, run_id, offset
        self._client: Any = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        import mlflow

        if not metrics or "step" not in metrics[0]:
            return
        reported = dict(metrics[0])  # every rank reports the same, all-reduced values
        step = self.offset + int(reported.pop("step"))
        try:
            if self._client is None:
                self._client = mlflow.MlflowClient(tracking_uri=self.uri)
            log_metrics(self._client, self.run_id, numeric_metrics(reported), step)
        except Exception as e:  # an unreachable tracker loses a step's metrics (metrics.json keeps them), not the run
            logger.warning("could not log step %d to MLflow at %s: %s", step, self.uri, e)
