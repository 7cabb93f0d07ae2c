"""One SPIN iteration as a short sequence of named stages.

    generate  the generator (model k) answers a seeded sample of SFT prompts       → iter_k/generations/
    score     model k's log-probs of the real and generated answers (reference)   → iter_k/pairs/
    baseline  (iteration 0) the SFT model on the validation and test prompts        → baselines/sft/evaluation/
    train     Ray Train FSDP2 workers minimise the SPIN loss, publishing model k+1 → iter_k/model/
              (the checkpoint that scored best on the validation split)
    publish   the generator moves to model k+1 without a restart
    evaluate  model k+1 on the validation and test prompts, prompt by prompt      → iter_k/evaluation/
    record    what was measured                                                    → iter_k/metrics.json
    cards     Hugging Face cards of the model and of its pairs     → iter_k/model/README.md, iter_k/pairs/_README.md

Each stage's output is committed atomically and skipped when already complete, so a re-run resumes where
a crash stopped and a finished iteration is never redone.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from jobs.config import SpinConfig
from jobs.iteration.context import IterationContext
from jobs.iteration.evaluate import run_baseline, run_evaluate
from jobs.iteration.generate import run_generate, warm_callers
from jobs.iteration.monitoring import MetricsSink
from jobs.iteration.score import run_score
from jobs.iteration.train import run_train
from jobs.metrics import Evaluation, IterationMetrics
from jobs.progress import Progress, StatusSink
from jobs.report.cards import write_cards
from jobs.report.results import ModelResult, best_model, load_run

logger = logging.getLogger("spin")


def run_iteration(cfg: SpinConfig, k: int, progress: Progress | None = None) -> IterationMetrics:
    """Run (or resume) iteration k of the run described by `cfg`; returns what it measured (its metrics.json)."""
    ctx = IterationContext.create(cfg, k)
    if ctx.storage.is_complete(ctx.storage.model(k)) and ctx.storage.exists(ctx.storage.metrics(k)):
        logger.info("iteration %d is already complete", k)
        return IterationMetrics.model_validate(ctx.storage.read_json(ctx.storage.metrics(k)))
    if ctx.tracker is not None:
        logger.info("tracking in MLflow", extra={"run_id": ctx.tracker.run_id})  # a tracker that fails, fails now
    progress = progress or Progress()
    status = StatusSink(ctx.storage, k)
    progress.sinks += [status, MetricsSink(cfg.name, k)]
    metrics = _run_stages(ctx, progress, status)
    ctx.storage.write_json(ctx.storage.metrics(k), metrics.model_dump(mode="json"))
    if metrics.evaluation is not None:
        ctx.serve(metrics.model_out, k + 1)  # no weight move: `<name>:best` names it if its evaluation made it best
    write_cards(cfg, k)  # from what metrics.json now records
    if ctx.tracker is not None:
        _track(ctx, metrics)
    return metrics


def serve_best(cfg: SpinConfig) -> ModelResult | None:
    """After a run's last iteration: its generator serves the run's best model on validation (a weight move when
    that is not the last one), as `<name>:best`; None (the generator left as it is) when nothing was evaluated."""
    record = load_run(cfg.storage_uri, with_results=False)
    best = best_model(record)
    if best is not None and record.iterations:
        ctx = IterationContext.create(cfg, record.iterations[-1].iteration)
        ctx.serve(best.evaluation.model, best.evaluation.model_version)
        logger.info("generator serves the run's best model", extra={"model": best.label})
    return best


def _track(ctx: IterationContext, metrics: IterationMetrics) -> None:
    """The iteration's summary and model card to the run's tracker (its steps went from the Train controller)."""
    assert ctx.tracker is not None
    card = ctx.storage.read_text(f"{ctx.storage.model(ctx.k)}/README.md")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "README.md")
        path.write_text(card)
        ctx.tracker.log_iteration(metrics, str(path))


def _run_stages(ctx: IterationContext, progress: Progress, status: StatusSink) -> IterationMetrics:
    d, storage, k = ctx.cfg.data, ctx.storage, ctx.k
    evaluating = d.validation_prompts + d.test_prompts > 0
    baseline: Evaluation | None = None
    evaluation: Evaluation | None = None

    with progress.stage("generate") as stage:
        if not storage.is_complete(storage.generations(k)):
            warm_callers(ctx)  # while the generator starts; nothing waits for them
            stage.part("serve", ctx.serve(ctx.model_uri, version=k))  # model k answers its own prompts
        generation = run_generate(ctx, stage)
    with progress.stage("score") as stage:
        scoring = run_score(ctx, stage)
    if evaluating and k == 0:
        with progress.stage("baseline") as stage:
            stage.part("serve", ctx.serve(ctx.model_uri, version=0))
            baseline = run_baseline(ctx, stage)
    with progress.stage("train") as stage:
        training = run_train(ctx, stage)
    with progress.stage("publish", total=1) as stage:
        # The generator moves to model k+1 in place: the next iteration samples from it.
        stage.update(1, seconds=ctx.serve(storage.uri_of(storage.model(k)), version=k + 1))
    if evaluating:
        with progress.stage("evaluate") as stage:
            selected = training.selected
            evaluation = run_evaluate(ctx, stage).model_copy(
                update={
                    "selected_step": selected.step if selected else None,
                    "diagnostics": selected,
                }
            )
    return IterationMetrics(
        iteration=k,
        name=ctx.cfg.name,
        settings=ctx.iteration,
        model_in=ctx.model_uri,
        model_out=storage.uri_of(storage.model(k)),
        stage_seconds=dict(status.status["stage_seconds"]),
        stage_parts=dict(progress.parts),
        generate=generation,
        score=scoring,
        train=training,
        baseline=baseline,
        evaluation=evaluation,
    )
