"""One SPIN iteration as a short sequence of named stages.

    generate  the generator (model k) answers a seeded sample of SFT prompts       → iter_k/generations/
    score     model k's log-probs of the real and generated answers (reference)   → iter_k/pairs/
    baseline  (iteration 0, with held-out prompts) the SFT model's own held-out scores
    train     Ray Train FSDP2 workers minimise the SPIN loss, publishing model k+1 → iter_k/model/
    publish   the generator moves to model k+1 (the best evaluated checkpoint) without a restart
    evaluate  model k+1's greedy answers to the held-out prompts: task metric, answer length
    record    what was measured                                                    → iter_k/metrics.json

Each stage's output is committed atomically and skipped when already complete, so a re-run resumes where
a crash stopped and a finished iteration is never redone.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.weights import serve_model
from jobs.chat import pad_id
from jobs.config import SpinConfig
from jobs.context import IterationContext
from jobs.generate import generator_app_name, generator_args, run_generate
from jobs.held_out import evaluate_served_model, reference_nll
from jobs.modeling import load_tokenizer
from jobs.monitoring import MetricsSink
from jobs.progress import Progress, StatusSink
from jobs.score import run_score
from jobs.train import run_train

logger = logging.getLogger("spin")


def run_iteration(cfg: SpinConfig, k: int, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) iteration k of the run described by `cfg`; returns its metrics.json content."""
    ctx = IterationContext.create(cfg, k)
    metrics_path = ctx.path("metrics.json")
    if ctx.storage.is_complete(ctx.path("model")) and ctx.storage.exists(metrics_path):
        logger.info("iteration %d is already complete", k)
        return dict(ctx.storage.read_json(metrics_path))
    progress = progress or Progress()
    status = StatusSink(ctx.storage, k)
    progress.sinks += [status, MetricsSink(cfg.name, k)]
    metrics = _run_stages(cfg, ctx, progress, status)
    ctx.storage.write_json(metrics_path, metrics)
    return metrics


def _run_stages(cfg: SpinConfig, ctx: IterationContext, progress: Progress, status: StatusSink) -> dict[str, Any]:
    k = ctx.k
    pad = pad_id(load_tokenizer(ctx.model_dir))
    app, evaluating = generator_app_name(cfg), cfg.data.held_out_prompts > 0
    extra: dict[str, Any] = {}

    with progress.stage("generate") as stage:
        generation = run_generate(ctx, stage)
    with progress.stage("score") as stage:
        scoring = run_score(ctx, stage, pad)
    if evaluating and k == 0:
        with progress.stage("baseline") as stage:  # the SFT model's own scores, which SPIN must beat
            serve_model(generator_args(ctx), app, ctx.model_uri, 0)
            extra["baseline"] = evaluate_served_model(ctx, app, 0, stage) | {"nll/real": reference_nll(ctx)}
    with progress.stage("train") as stage:
        training = run_train(ctx, stage, pad)
    with progress.stage("publish", total=1) as stage:
        # The generator moves to model k+1 in place: the next iteration samples from it.
        serve_model(generator_args(ctx), app, ctx.storage.uri_of(ctx.path("model")), k + 1)
        stage.update(1)
    if evaluating:
        with progress.stage("evaluate") as stage:
            extra["evaluation"] = evaluate_served_model(ctx, app, k + 1, stage) | {
                "selected_step": (training["selected"] or {}).get("step"),
                "diagnostics": _diagnostics(training["selected"]),
            }
    return {
        "iteration": k,
        "name": cfg.name,
        "settings": ctx.iteration.model_dump(),
        "model_in": ctx.model_uri,
        "model_out": ctx.storage.uri_of(ctx.path("model")),
        "stage_seconds": dict(status.status["stage_seconds"]),
        "generate": generation,
        "score": scoring,
        "train": training,
        **extra,
    }


def _diagnostics(selected: dict[str, Any] | None) -> dict[str, Any] | None:
    """Held-out SPIN diagnostics of the published model against this iteration's reference."""
    if not selected:
        return None
    keys = ("rewards/accuracies", "rewards/margins", "margin", "nll/real", "gain/real", "gain/generated", "loss")
    return {key: selected[key] for key in keys if key in selected}
