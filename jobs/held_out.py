"""Evaluate stage: the generator's greedy answers to the held-out prompts, scored by the task metric.

Every model of a run (the SFT model, then each iteration's) is evaluated the same way: the same prompts, the
same engine (the run's vLLM generator), greedy decoding, and the same answer matcher.
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.weights import generator_handle
from jobs.context import IterationContext
from jobs.evaluate import task_metric
from jobs.progress import Stage
from services.generator.schemas import GenerateRequest

REQUEST_SIZE = 64


def held_out_table(ctx: IterationContext) -> Any:
    """This iteration's held-out pair records (a pyarrow Table)."""
    table = pq.read_table(ctx.path("pairs"), filesystem=ctx.storage.fs)
    return table.filter(pc.equal(table.column("split"), "held_out"))


def greedy_answers(
    app_name: str, prompts: list[list[int]], max_new_tokens: int, version: int, timeout_s: float
) -> list[Any]:
    """Greedy completions from the generator, which must be serving `version`."""
    handle = generator_handle(app_name)
    futures = [
        handle.generate.remote(
            GenerateRequest(prompt_token_ids=chunk, max_tokens=[max_new_tokens] * len(chunk), temperature=0.0)
        )
        for chunk in (prompts[i : i + REQUEST_SIZE] for i in range(0, len(prompts), REQUEST_SIZE))
    ]
    completions = []
    for future in futures:
        response = future.result(timeout_s=timeout_s)
        if response.model_version != version:
            raise RuntimeError(f"evaluating version {version}, but the generator serves {response.model_version}")
        completions += response.completions
    return completions


def evaluate_served_model(
    ctx: IterationContext, app_name: str, version: int, stage: Stage | None = None
) -> dict[str, Any]:
    """Task metric and answer length of the model the generator serves, on the held-out prompts."""
    table = held_out_table(ctx)
    prompts, reals = table.column("prompt_ids").to_pylist(), table.column("real").to_pylist()
    e = ctx.cfg.eval
    completions = greedy_answers(app_name, prompts, e.max_new_tokens, version, ctx.cfg.generator.request_timeout_s)
    if stage:
        stage.update(len(completions), len(prompts))
    result: dict[str, Any] = {
        "model_version": version,
        "held_out_prompts": len(prompts),
        "generated_tokens": sum(len(c.token_ids) for c in completions) / max(1, len(completions)),
    }
    if e.task != "none":
        result |= task_metric([c.text for c in completions], reals, e.answer_pattern)
    return result


def reference_nll(ctx: IterationContext) -> float:
    """Per-token NLL of the held-out real responses under this iteration's starting model (its reference)."""
    table = held_out_table(ctx)
    return -pc.sum(table.column("ref_logp_real")).as_py() / pc.sum(table.column("real_tokens")).as_py()
