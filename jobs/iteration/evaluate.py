"""Evaluate stage: the generator's greedy answers to the held-out prompts, scored by the task metric.

Every model of a run (the SFT model, then each iteration's) is evaluated the same way: the same prompts, the
same engine (the run's vLLM generator), greedy decoding, and the same answer matcher.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from jobs.iteration.context import IterationContext
from jobs.iteration.data import read_pairs, to_table
from jobs.iteration.train_eval import task_metric
from jobs.metrics import Evaluation
from jobs.progress import Stage
from jobs.spin.metrics import response_nll
from services.generator.client import generator_handle
from services.generator.schemas import Completion, GenerateRequest

REQUEST_SIZE = 64


def held_out_table(ctx: IterationContext) -> pa.Table:
    """This iteration's held-out pair records."""
    return to_table(read_pairs(ctx.storage, [ctx.k], "held_out"))


def greedy_answers(
    app_name: str, prompts: list[list[int]], max_new_tokens: int, version: int, timeout_s: float
) -> list[Completion]:
    """Greedy completions from the generator, which must be serving `version`."""
    handle = generator_handle(app_name)
    futures = [
        handle.generate.remote(
            GenerateRequest(prompt_token_ids=chunk, max_tokens=[max_new_tokens] * len(chunk), temperature=0.0)
        )
        for chunk in (prompts[i : i + REQUEST_SIZE] for i in range(0, len(prompts), REQUEST_SIZE))
    ]
    completions: list[Completion] = []
    for future in futures:
        response = future.result(timeout_s=timeout_s)
        if response.model_version != version:
            raise RuntimeError(f"evaluating version {version}, but the generator serves {response.model_version}")
        completions += response.completions
    return completions


def evaluate_served(ctx: IterationContext, version: int, stage: Stage | None = None) -> Evaluation:
    """Task metric and answer length of the model the generator serves as `version`, on the held-out prompts."""
    table = held_out_table(ctx)
    prompts, reals = table.column("prompt_ids").to_pylist(), table.column("real").to_pylist()
    e = ctx.cfg.eval
    completions = greedy_answers(
        ctx.generator_app, prompts, e.max_new_tokens, version, ctx.cfg.generator.request_timeout_s
    )
    if stage:
        stage.update(len(completions), len(prompts))
    result: dict[str, Any] = {
        "model_version": version,
        "held_out_prompts": len(prompts),
        "generated_tokens": sum(len(c.token_ids) for c in completions) / max(1, len(completions)),
    }
    if e.task != "none":
        result |= task_metric([c.text for c in completions], reals, e.answer_pattern)
    return Evaluation.model_validate(result)


def run_baseline(ctx: IterationContext, stage: Stage) -> Evaluation:
    """The SFT model's own held-out scores (iteration 0's starting model, served as version 0), which SPIN must
    beat; its real answers' NLL comes from the reference log-probs the score stage stored."""
    table = held_out_table(ctx)
    logps, tokens = (
        torch.tensor(table.column(c).to_pylist(), dtype=torch.float64) for c in ("ref_logp_real", "real_tokens")
    )
    return evaluate_served(ctx, ctx.k, stage).model_copy(update={"nll_real": float(response_nll(logps, tokens))})


def run_evaluate(ctx: IterationContext, stage: Stage) -> Evaluation:
    """The published model k+1, which the generator serves after the publish stage."""
    return evaluate_served(ctx, ctx.k + 1, stage)
