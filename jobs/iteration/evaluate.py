"""Evaluating a model on the run's validation and test prompts: the generator's greedy answers, scored by the
task metric, and the real answers' likelihood under the model, prompt by prompt.

Every model of a run (the SFT model, each iteration's, the continued-SFT candidates) is evaluated the same way:
the same prompts (eval_prompts/, fixed for the run), the same engine (the run's vLLM generator), greedy decoding,
the same answer matcher, and the trainer's forward pass for the likelihood. Each per-prompt result is stored
(<model>/evaluation/), so any two models can be compared prompt by prompt (jobs/report/comparisons.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from cluster.files import local_copy
from jobs.chat import pad_id
from jobs.hf import load_causal_lm, load_tokenizer
from jobs.iteration.context import IterationContext
from jobs.iteration.train_eval import no_answer_found
from jobs.iteration.train_step import response_logps
from jobs.metrics import Evaluation, SplitScores
from jobs.progress import Stage
from jobs.records import EVAL_RESULT_SCHEMA
from jobs.spin.metrics import answer_match
from services.generator.client import generate, generator_handle
from services.generator.schemas import Completion, GenerateRequest

REQUEST_SIZE = 64
SPLITS = ("validation", "test")


def greedy_answers(
    app_name: str, prompts: list[list[int]], max_new_tokens: int, version: int, timeout_s: float
) -> list[Completion]:
    """Greedy completions from the generator, which must be serving `version`."""
    handle = generator_handle(app_name)
    requests = [
        GenerateRequest(prompt_token_ids=chunk, max_tokens=[max_new_tokens] * len(chunk), temperature=0.0)
        for chunk in (prompts[i : i + REQUEST_SIZE] for i in range(0, len(prompts), REQUEST_SIZE))
    ]
    sent = [handle.generate.remote(r) for r in requests]  # all at once: the engine batches across them
    completions: list[Completion] = []
    for request, future in zip(requests, sent, strict=True):
        response = generate(handle, request, timeout_s, sent=future)
        if not response.produced_by(version):
            raise RuntimeError(
                f"evaluating version {version}, but the generator served {response.model_version} with weights "
                f"{response.sampled_with()}"
            )
        completions += response.completions
    return completions


def _real_answer_nll(model_uri: str, data: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """Per prompt, the real answer's per-token NLL under the model (run as a Ray task beside the generator)."""
    model_dir = local_copy(model_uri)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, pad = load_causal_lm(model_dir, torch.float32, device).eval(), pad_id(load_tokenizer(model_dir))
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            logps, tokens = response_logps(model, data[i : i + batch_size], pad, device)
            out += (-logps / tokens).double().tolist()
    return out


def real_answer_nll(ctx: IterationContext, model_uri: str, table: pa.Table) -> list[float]:
    data = list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    resources: dict[str, Any] = {"num_gpus": 1} if ctx.train.use_gpu else {"num_cpus": 1}
    task = ray.remote(**resources)(_real_answer_nll)
    nll: list[float] = ray.get(task.remote(model_uri, data, ctx.train.micro_batch_size))
    return nll


def correctness(answers: Sequence[str], reals: Sequence[str], pattern: str) -> list[bool | None]:
    """The task metric's verdict on each answer; None where the real answer has no answer to match."""
    out: list[bool | None] = []
    for answer, real in zip(answers, reals, strict=True):
        score, counted = answer_match([answer], [real], pattern)
        out.append(None if counted == 0 else score == 1.0)
    if reals and all(c is None for c in out):
        raise ValueError(no_answer_found(pattern, reals))
    return out


def split_scores(results: pa.Table) -> SplitScores:
    counted = results.filter(pc.is_valid(results.column("correct")))
    return SplitScores(
        prompts=results.num_rows,
        task_metric=pc.mean(counted.column("correct").cast(pa.float64())).as_py() if counted.num_rows else None,
        task_prompts=counted.num_rows if counted.num_rows else None,
        nll=pc.mean(results.column("nll")).as_py(),
        answer_tokens=pc.mean(results.column("answer_tokens")).as_py(),
    )


def evaluate_model(
    ctx: IterationContext,
    model_uri: str,
    version: int,
    folder: str,
    stage: Stage | None = None,
    splits: Sequence[str] = SPLITS,
) -> Evaluation:
    """Evaluate the model the generator serves as `version` (stored at `model_uri`) on the eval prompts of
    `splits`; its per-prompt results are committed to `folder`, with the summary in their marker (so a resumed
    iteration does not evaluate the same model twice)."""
    storage, e = ctx.storage, ctx.cfg.eval
    if storage.is_complete(folder) and storage.marker(folder).get("model") == model_uri:
        if stage:
            stage.already_done()
        return Evaluation.model_validate(storage.marker(folder)["evaluation"])
    prompts = storage.read_table(storage.eval_prompts())
    prompts = prompts.filter(pc.is_in(prompts.column("split"), pa.array(list(splits))))
    if stage:
        stage.update(0, prompts.num_rows)
    completions = greedy_answers(
        ctx.generator_app,
        prompts.column("prompt_ids").to_pylist(),
        e.max_new_tokens,
        version,
        ctx.cfg.generator.request_timeout_s,
    )
    answers = [c.text for c in completions]
    reals = prompts.column("real").to_pylist()
    correct = correctness(answers, reals, e.answer_pattern) if e.task != "none" else [None] * len(answers)
    results = pa.table(
        {
            "prompt_id": prompts.column("prompt_id"),
            "split": prompts.column("split"),
            "answer": answers,
            "answer_tokens": [len(c.token_ids) for c in completions],
            "correct": correct,
            "nll": real_answer_nll(ctx, model_uri, prompts),
        },
        schema=EVAL_RESULT_SCHEMA,
    )
    scores: dict[str, Any] = {
        split: split_scores(results.filter(pc.equal(results.column("split"), split)))
        for split in splits
        if pc.any(pc.equal(results.column("split"), split)).as_py()
    }
    evaluation = Evaluation(model=model_uri, model_version=version, **scores)
    storage.write_table(folder, results, {"model": model_uri, "evaluation": evaluation.model_dump(mode="json")})
    if stage:
        stage.update(prompts.num_rows)
    return evaluation


def run_baseline(ctx: IterationContext, stage: Stage) -> Evaluation:
    """The SFT model (iteration 0's starting model, served as version 0), which SPIN must beat."""
    from jobs.storage import SFT

    return evaluate_model(ctx, ctx.model_uri, ctx.k, ctx.storage.baseline(SFT, "evaluation"), stage)


def run_evaluate(ctx: IterationContext, stage: Stage) -> Evaluation:
    """The published model k+1, which the generator serves after the publish stage."""
    storage = ctx.storage
    return evaluate_model(ctx, storage.uri_of(storage.model(ctx.k)), ctx.k + 1, storage.evaluation(ctx.k), stage)
