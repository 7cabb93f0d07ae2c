"""One SPIN iteration as a short sequence of named stages.

    generate  the generator (model k) answers a seeded sample of SFT prompts       → iter_k/generations/
    score     model k's log-probs of the real and generated answers (reference)   → iter_k/pairs/
    train     Ray Train FSDP2 workers minimise the SPIN loss, publishing model k+1 → iter_k/model/
    publish   the generator moves to model k+1 without a restart
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
from jobs.modeling import load_tokenizer
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
    progress.sinks.append(status)
    pad = pad_id(load_tokenizer(ctx.model_dir))

    with progress.stage("generate") as stage:
        generation = run_generate(ctx, stage)
    with progress.stage("score") as stage:
        scoring = run_score(ctx, stage, pad)
    with progress.stage("train") as stage:
        training = run_train(ctx, stage, pad)
    with progress.stage("publish", total=1) as stage:
        # The generator moves to model k+1 in place: the next iteration samples from it.
        serve_model(generator_args(ctx), generator_app_name(cfg), ctx.storage.uri_of(ctx.path("model")), k + 1)
        stage.update(1)

    metrics = {
        "iteration": k,
        "name": cfg.name,
        "settings": ctx.iteration.model_dump(),
        "model_in": ctx.model_uri,
        "model_out": ctx.storage.uri_of(ctx.path("model")),
        "stage_seconds": dict(status.status["stage_seconds"]),
        "generate": generation,
        "score": scoring,
        "train": training,
    }
    ctx.storage.write_json(metrics_path, metrics)
    return metrics
