"""The "continued SFT at equal compute" baseline: what the SFT model gains from more of plain SFT instead.

SPIN's optimizer steps over the run are counted, and the SFT model is fine-tuned for as many steps on the
same prompts' real responses, with twice SPIN's global batch per step (a SPIN step runs B pairs, i.e. 2B
sequences, forward and backward). Each candidate learning rate is trained so and scored on the validation split;
the best is then evaluated exactly as the SPIN models were (the run's generator serves it, greedy answers to the
validation and test prompts) and reported on test. What each candidate cost is recorded beside SPIN's stages.

    spin baseline CONFIG       (after the run's iterations; `make demo` does it)
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import ray

from cluster.files import local_copy
from jobs.baseline.sft import sft_on_tokens
from jobs.config import SpinConfig
from jobs.iteration.context import IterationContext
from jobs.iteration.data import read_pairs, to_table
from jobs.iteration.evaluate import evaluate_model
from jobs.metrics import BaselineMetrics, Candidate, SplitScores
from jobs.report.results import load_run
from jobs.storage import CONTINUED_SFT, RunStorage
from services.generator.client import stop_serving

BASELINE_VERSION = -1  # the generator's version number for a model that is not an iteration's


def _train_task(
    model_uri: str, storage_uri: str, out_path: str, data: list[tuple[list[int], list[int]]], steps: int, **kwargs: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = sft_on_tokens(local_copy(model_uri), tmp, data, steps=steps, **kwargs)
        RunStorage(storage_uri).upload_dir(tmp, out_path, {"steps": steps, **result})
    return result


def validation_score(scores: SplitScores) -> float:
    """What candidates are ranked by: the task metric, else the real answers' likelihood."""
    return scores.task_metric if scores.task_metric is not None else -scores.nll


def run_continued_sft(cfg: SpinConfig) -> BaselineMetrics:
    rates = cfg.eval.continued_sft_learning_rates
    if not rates:
        raise ValueError("set eval.continued_sft_learning_rates to train the continued-SFT baseline")
    record = load_run(cfg.storage_uri)
    if not record.iterations:
        raise ValueError(f"{cfg.storage_uri} has no finished iteration to match the compute of")
    storage = RunStorage(cfg.storage_uri)
    steps, batch_size = sum(m.train.steps for m in record.iterations), 2 * cfg.train.global_batch_size
    table = to_table(read_pairs(storage, [m.iteration for m in record.iterations], "train"))
    data = list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    ctx = IterationContext.create(cfg, 0, of_any_run=True)  # the run's eval prompts and generator settings
    candidates, trained = [], {}
    try:
        for lr in rates:
            candidate, trained[lr] = _candidate(ctx, data, steps, batch_size, lr)
            candidates.append(candidate)
        best = max(candidates, key=lambda c: validation_score(c.validation))
        path = storage.baseline(CONTINUED_SFT, "candidates", f"lr_{best.learning_rate:g}", "model")
        ctx.serve(storage.uri_of(path), BASELINE_VERSION)
        scores = evaluate_model(
            ctx, storage.uri_of(path), BASELINE_VERSION, storage.baseline(CONTINUED_SFT, "evaluation")
        )
    finally:
        stop_serving(ctx.generator_app)
    result = trained[best.learning_rate]
    metrics = BaselineMetrics.model_validate(
        scores.model_dump()
        | {
            "train": {
                "steps": steps,
                "batch_size": batch_size,
                "examples": len(data),
                "learning_rate": best.learning_rate,
                "final_loss": result["final_loss"],
                "seconds": result["seconds"],
            },
            "candidates": [c.model_dump() for c in candidates],
        }
    )
    storage.write_json(storage.baseline(CONTINUED_SFT, "metrics.json"), metrics.model_dump(mode="json"))
    return metrics


def _candidate(
    ctx: IterationContext, data: list[tuple[list[int], list[int]]], steps: int, batch_size: int, lr: float
) -> tuple[Candidate, dict[str, Any]]:
    """Train continued SFT at `lr` (unless a committed model says it was) and score it on the validation split."""
    storage, cfg = ctx.storage, ctx.cfg
    folder = storage.baseline(CONTINUED_SFT, "candidates", f"lr_{lr:g}")
    path = f"{folder}/model"
    if not storage.is_complete(path):
        resources = {"num_gpus": 1} if cfg.train.use_gpu else {"num_cpus": max(1.0, cfg.train.cpus_per_worker)}
        ray.get(
            ray.remote(**resources)(_train_task).remote(
                cfg.model.path,
                storage.uri,
                path,
                data,
                steps,
                batch_size=batch_size,
                learning_rate=lr,
                warmup_steps=max(1, steps // 10),
                schedule="linear",
                seed=cfg.train.seed,
            )
        )
    trained = storage.marker(path)
    started = time.perf_counter()
    ctx.serve(storage.uri_of(path), BASELINE_VERSION)
    evaluation = evaluate_model(
        ctx, storage.uri_of(path), BASELINE_VERSION, f"{folder}/evaluation", splits=("validation",)
    )
    assert evaluation.validation is not None
    candidate = Candidate(
        learning_rate=lr,
        validation=evaluation.validation,
        train_seconds=trained["seconds"],
        eval_seconds=time.perf_counter() - started,
    )
    return candidate, trained
