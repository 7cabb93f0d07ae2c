"""Configs of tiny runs for the tests: a 2-worker CPU run of the tiny model, small enough for 2 cores."""

from __future__ import annotations

import copy
from typing import Any

TINY_TRAIN = {
    "num_workers": 2,
    "use_gpu": False,
    "precision": "fp32",
    "cpus_per_worker": 1,
    "micro_batch_size": 4,
    "global_batch_size": 8,
    "learning_rate": 5e-4,
    "beta": 0.5,
    "optimizer": "adamw",
    "max_prompt_length": 64,
    "max_length": 128,
    "epochs": 1,
    "checkpoint_every_steps": 2,
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` laid over it, section by section (the base is never changed)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_run_config(name: str, storage_uri: str, model_path: str, data_path: str, **overrides: Any) -> dict[str, Any]:
    """A run config (as the REST API takes it) of the tiny model on CPU; `overrides` replace sections' fields."""
    base = {
        "name": name,
        "storage_uri": storage_uri,
        "model": {"path": model_path, "dtype": "float32"},
        "data": {"path": data_path},
        "sampling": {"max_new_tokens": 24},
        "generator": {"kv_cache_memory_bytes": 64 * 2**20, "prompts_per_request": 8},
        "train": TINY_TRAIN,
        "prompts_per_iteration": 24,
        "iterations": [{}],
    }
    return merged(base, overrides)


def step_metrics(**values: float) -> dict[str, float]:
    """SPIN's per-pair means (jobs/spin/names.py), all 0 but `values` (given by their names in the file)."""
    from jobs.spin.names import METRIC_NAMES

    return {name: 0.0 for name in METRIC_NAMES} | values


def split_scores(task_metric: float | None, nll: float, prompts: int = 10) -> dict[str, Any]:
    return {"prompts": prompts, "task_metric": task_metric, "task_prompts": prompts, "nll": nll, "answer_tokens": 8.0}


def evaluation(version: int, task_metric: float | None, nll: float, **extra: Any) -> dict[str, Any]:
    """A model's evaluation summary: the same scores on the validation and the test split."""
    return {
        "model": f"/tmp/r/model-{version}",
        "model_version": version,
        "validation": split_scores(task_metric, nll),
        "test": split_scores(task_metric, nll),
    } | extra


def iteration_metrics(
    k: int,
    *,
    task_metric: float | None,
    accuracy: float,
    margin: float,
    nll: float,
    losses: list[float],
    baseline: dict[str, Any] | None = None,
) -> Any:
    """A complete, valid iter_<k>/metrics.json (jobs.metrics.IterationMetrics) with the given headline numbers."""
    from jobs.config import SpinConfig
    from jobs.metrics import IterationMetrics

    cfg = SpinConfig.model_validate(tiny_run_config("r", "/tmp/r", "/tmp/m", "/tmp/d.jsonl"))
    history = [
        step_metrics(loss=v, **{"rewards/margins": 0.1 * i, "rewards/accuracies": 0.5 + 0.1 * i})
        | {"step": i + 1, "epoch": 0, "learning_rate": 1e-4, "tokens_per_s": 100.0}
        for i, v in enumerate(losses)
    ]
    selected = step_metrics(**{"rewards/accuracies": accuracy, "rewards/margins": margin, "gain/real": 0.2}) | {
        "step": len(losses),
        "nll/real": nll,
        "task_metric": task_metric,
        "score": task_metric or 0.0,
    }
    generate = {
        "rows": 110,
        "prompts": 100,
        "unique_prompts": 130,
        "duplicate_rows": 0,
        "bad_rows": 0,
        "validation_prompts": 10,
        "test_prompts": 20,
    }
    return IterationMetrics.model_validate(
        {
            "iteration": k,
            "name": "r",
            "settings": cfg.iteration(0).model_dump(),
            "model_in": f"/tmp/r/iter_{k - 1}/model" if k else "/tmp/m",
            "model_out": f"/tmp/r/iter_{k}/model",
            "stage_seconds": {"generate": 10.0, "train": 20.0},
            "generate": generate,
            "score": {"rows": 110, "dtype": "float32"},
            "train": {
                "pairs": 100 * (k + 1),
                "pairs_from_iterations": [k],
                "steps": len(losses),
                "history": history,
                "selected": selected,
            },
            "evaluation": evaluation(k + 1, task_metric, nll, selected_step=len(losses), diagnostics=selected),
            "baseline": baseline,
        }
    )
