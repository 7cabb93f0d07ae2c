"""Generate stage: Ray Data streams the iteration's prompts through the generator deployment.

SFT rows ─ keep sampled rows ─ GeneratorCaller actors ──(Serve handle)──► SpinGenerator (vLLM)
                                    │
                                    └─► generation records (iter_<k>/generations/)
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from pydantic import BaseModel, ConfigDict

from cluster.files import local_copy
from jobs.chat import encode_prompt, encode_response
from jobs.config import SamplingConfig
from jobs.hf import load_tokenizer
from jobs.iteration.context import IterationContext
from jobs.iteration.data import index_rows, keep_rows, read_sft, write_records
from jobs.metrics import GenerateSummary
from jobs.progress import Stage
from jobs.records import GENERATION_SCHEMA
from jobs.spin.pairs import (
    completed_response,
    response_budget,
    sample_key,
    select_prompts,
    truncate_prompt,
    truncate_response,
)
from services.generator.client import generator_handle, generator_info
from services.generator.schemas import GenerateRequest

CALLER_CPUS = 0.25  # the callers only tokenize and wait on the deployment


class CallerSpec(BaseModel):
    """What a GeneratorCaller needs: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    tokenizer_path: str
    app_name: str
    iteration: int
    model_version: int
    sampling: SamplingConfig
    max_prompt_length: int
    max_length: int
    timeout_s: float


class GeneratorCaller:
    """A Ray Data actor: tokenizes a batch of prompts with the chat template and asks the generator."""

    def __init__(self, spec: CallerSpec):
        self.spec = spec
        self.tokenizer = load_tokenizer(local_copy(spec.tokenizer_path))
        self.handle = generator_handle(spec.app_name)

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec, tok = self.spec, self.tokenizer
        pids = batch.column("prompt_id").to_pylist()
        messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
        reals = batch.column("real").to_pylist()
        prompts = [truncate_prompt(encode_prompt(tok, m), spec.max_prompt_length) for m in messages]
        budgets = [response_budget(len(p), spec.max_length, spec.sampling.max_new_tokens) for p in prompts]
        real_ids, real_cut = zip(
            *(truncate_response(encode_response(tok, r), b) for r, b in zip(reals, budgets, strict=True)),
            strict=True,
        )
        completions = self._generate(pids, prompts, budgets)
        generated_ids = [
            completed_response(c.token_ids, c.finish_reason == "stop", tok.eos_token_id) for c in completions
        ]
        n = len(pids)
        return pa.table(
            {
                "prompt_id": pids,
                "split": batch.column("split"),
                "iteration": [spec.iteration] * n,
                "model_version": [spec.model_version] * n,
                "prompt": [tok.decode(p) for p in prompts],  # the rendered template, as truncated
                "real": reals,
                "generated": [c.text for c in completions],
                "prompt_ids": prompts,
                "real_ids": list(real_ids),
                "generated_ids": generated_ids,
                "prompt_tokens": [len(p) for p in prompts],
                "real_tokens": [len(r) for r in real_ids],
                "generated_tokens": [len(g) for g in generated_ids],
                "real_truncated": list(real_cut),
                "finish_reason": [c.finish_reason for c in completions],
            },
            schema=GENERATION_SCHEMA,
        )

    def _generate(self, pids: list[str], prompts: list[list[int]], budgets: list[int]) -> list[Any]:
        spec, s = self.spec, self.spec.sampling
        request = GenerateRequest(
            prompt_token_ids=prompts,
            max_tokens=budgets,
            temperature=s.temperature,
            top_p=s.top_p,
            # One seed per (iteration, prompt): the same answer however prompts are batched or retried.
            seeds=[sample_key(s.seed, "generate", spec.iteration, pid) % 2**31 for pid in pids],
        )
        response = self.handle.generate.remote(request).result(timeout_s=spec.timeout_s)
        if response.model_version != spec.model_version:
            raise RuntimeError(
                f"the generator serves model version {response.model_version}, "
                f"but iteration {spec.iteration} must sample from version {spec.model_version}"
            )
        if any(c.finish_reason == "abort" for c in response.completions):
            raise RuntimeError("the generator aborted requests; their outputs would be cut short")
        return list(response.completions)


def generation_dataset(
    rows: ray.data.Dataset, spec: CallerSpec, prompts_per_request: int, callers: int
) -> ray.data.Dataset:
    """SFT rows (with their split) mapped to generation records by `callers` actors calling the deployment."""
    return rows.map_batches(
        GeneratorCaller,
        fn_constructor_kwargs={"spec": spec},
        batch_size=prompts_per_request,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=callers),
        num_cpus=CALLER_CPUS,
    )


def run_generate(ctx: IterationContext, stage: Stage) -> GenerateSummary:
    """Sample the iteration's prompts and write one generation record per prompt (the generator must be serving
    model k)."""
    cfg, storage, path = ctx.cfg, ctx.storage, ctx.storage.generations(ctx.k)
    if storage.is_complete(path):
        stage.already_done()
        return GenerateSummary.model_validate(storage.marker(path))
    rows = read_sft(cfg.data)
    usable, bad = index_rows(rows, cfg.data.bad_rows)
    selection = select_prompts(
        usable, count=ctx.iteration.prompts, held_out=cfg.data.held_out_prompts, seed=cfg.data.seed, iteration=ctx.k
    )
    if not selection.train:
        raise ValueError(f"no usable SFT rows in {cfg.data.path or cfg.data.source} ({len(bad)} unusable)")
    split = {(r.source, r.row): "train" for r in selection.train}
    split |= {(r.source, r.row): "held_out" for r in selection.held_out}
    spec = CallerSpec(
        tokenizer_path=ctx.model_uri,
        app_name=ctx.generator_app,
        iteration=ctx.k,
        model_version=ctx.k,
        sampling=cfg.sampling,
        max_prompt_length=ctx.train.max_prompt_length,
        max_length=ctx.train.max_length,
        timeout_s=cfg.generator.request_timeout_s,
    )
    generations = generation_dataset(
        keep_rows(rows, split), spec, cfg.generator.prompts_per_request, cfg.generator.callers
    )
    generator = generator_info(ctx.generator_app)
    meta: dict[str, Any] = {
        "prompts": len(selection.train),
        "unique_prompts": selection.unique_prompts,
        "duplicate_rows": selection.duplicate_rows,
        "bad_rows": len(bad),
        "bad_row_examples": bad[:10],
        "held_out_prompts": len(selection.held_out),
        "generator": generator.model_dump() if generator else None,
    }
    expected = len(selection.train) + len(selection.held_out)
    _write_generations(ctx, stage, generations, meta, expected)
    return GenerateSummary.model_validate(storage.marker(path))


def _write_generations(
    ctx: IterationContext, stage: Stage, generations: ray.data.Dataset, meta: dict[str, Any], expected: int
) -> None:
    """Stream the records into storage, following tokens per second; the marker carries `meta`, written last."""
    storage, path = ctx.storage, ctx.storage.generations(ctx.k)
    stage.update(0, expected)
    started, generated_tokens = time.perf_counter(), 0

    def on_batch(rows: int, batch: pa.Table) -> None:
        nonlocal generated_tokens
        generated_tokens += pc.sum(batch["generated_tokens"]).as_py()
        tokens_per_s = round(generated_tokens / (time.perf_counter() - started), 1)
        meta.update(generated_tokens=generated_tokens, tokens_per_s=tokens_per_s)
        stage.update(rows, tokens_per_s=tokens_per_s)

    write_records(generations, storage, path, GENERATION_SCHEMA, meta=meta, on_batch=on_batch, expected=expected)
