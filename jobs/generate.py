"""Generate stage: Ray Data streams the iteration's prompts through the generator deployment.

SFT rows ─ keep sampled rows ─ GeneratorCaller actors ──(Serve handle)──► SpinGenerator (vLLM)
                                    │
                                    └─► generation records (iter_<k>/generations/)
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from cluster.weights import generator_info, serve_model
from jobs.chat import encode_prompt, encode_response
from jobs.config import SpinConfig
from jobs.context import IterationContext
from jobs.datasets import index_rows, keep_rows, read_sft, write_records
from jobs.modeling import load_tokenizer
from jobs.progress import Stage
from jobs.records import GENERATION_SCHEMA
from jobs.spin import (
    completed_response,
    response_budget,
    sample_key,
    select_prompts,
    truncate_prompt,
    truncate_response,
)
from jobs.storage import local_copy
from services.generator.app import DEPLOYMENT_NAME
from services.generator.schemas import GenerateRequest, GeneratorArgs

CALLER_CPUS = 0.25  # the callers only tokenize and wait on the deployment


class GeneratorCaller:
    """A Ray Data actor: tokenizes a batch of prompts with the chat template and asks the generator."""

    def __init__(
        self,
        *,
        tokenizer_path: str,
        app_name: str,
        deployment_name: str,
        iteration: int,
        model_version: int,
        sampling: dict[str, Any],
        max_prompt_length: int,
        max_length: int,
        timeout_s: float,
    ):
        from ray import serve

        self.tokenizer = load_tokenizer(local_copy(tokenizer_path))
        self.handle = serve.get_deployment_handle(deployment_name, app_name=app_name)
        self.iteration = iteration
        self.model_version = model_version
        self.sampling = sampling
        self.max_prompt_length = max_prompt_length
        self.max_length = max_length
        self.timeout_s = timeout_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        tok, s = self.tokenizer, self.sampling
        pids = batch.column("prompt_id").to_pylist()
        splits = batch.column("split").to_pylist()
        messages = [json.loads(m) for m in batch.column("messages").to_pylist()]
        reals = batch.column("real").to_pylist()
        prompts = [truncate_prompt(encode_prompt(tok, m), self.max_prompt_length) for m in messages]
        budgets = [response_budget(len(p), self.max_length, s["max_new_tokens"]) for p in prompts]
        real_ids, real_cut = zip(
            *(truncate_response(encode_response(tok, r), b) for r, b in zip(reals, budgets, strict=True)),
            strict=True,
        )
        request = GenerateRequest(
            prompt_token_ids=prompts,
            max_tokens=budgets,
            temperature=s["temperature"],
            top_p=s["top_p"],
            # One seed per (iteration, prompt): the same answer however prompts are batched or retried.
            seeds=[sample_key(s["seed"], "generate", self.iteration, pid) % 2**31 for pid in pids],
        )
        response = self.handle.generate.remote(request).result(timeout_s=self.timeout_s)
        if response.model_version != self.model_version:
            raise RuntimeError(
                f"the generator serves model version {response.model_version}, "
                f"but iteration {self.iteration} must sample from version {self.model_version}"
            )
        completions = response.completions
        if any(c.finish_reason == "abort" for c in completions):
            raise RuntimeError("the generator aborted requests; their outputs would be cut short")
        generated_ids = [
            completed_response(c.token_ids, c.finish_reason == "stop", tok.eos_token_id) for c in completions
        ]
        n = len(pids)
        return pa.table(
            {
                "prompt_id": pids,
                "split": splits,
                "iteration": [self.iteration] * n,
                "model_version": [self.model_version] * n,
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


def generation_dataset(
    prompts: ray.data.Dataset,
    *,
    tokenizer_path: str,
    app_name: str,
    deployment_name: str,
    iteration: int,
    model_version: int,
    sampling: dict[str, Any],
    max_prompt_length: int,
    max_length: int,
    timeout_s: float,
    prompts_per_request: int,
    callers: int,
) -> ray.data.Dataset:
    """`prompts` (SFT rows) mapped to generation records by `callers` actors calling the deployment."""
    return prompts.map_batches(
        GeneratorCaller,
        fn_constructor_kwargs=dict(
            tokenizer_path=tokenizer_path,
            app_name=app_name,
            deployment_name=deployment_name,
            iteration=iteration,
            model_version=model_version,
            sampling=sampling,
            max_prompt_length=max_prompt_length,
            max_length=max_length,
            timeout_s=timeout_s,
        ),
        batch_size=prompts_per_request,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=callers),
        num_cpus=CALLER_CPUS,
    )


def generator_app_name(cfg: SpinConfig) -> str:
    """Each run has its own generator application, so runs on one cluster never sample from each other's model."""
    return f"spin-generator-{cfg.name}-{hashlib.sha1(cfg.storage_uri.encode()).hexdigest()[:6]}"


def generator_args(ctx: IterationContext) -> GeneratorArgs:
    cfg, g = ctx.cfg, ctx.cfg.generator
    return GeneratorArgs(
        model_path=ctx.model_uri,
        model_version=ctx.k,
        dtype=ctx.compute_dtype,
        max_model_len=cfg.train.max_length,
        max_num_seqs=g.max_num_seqs,
        tensor_parallel_size=g.tensor_parallel_size,
        enforce_eager=g.enforce_eager,
        gpu_memory_utilization=g.gpu_memory_utilization,
        kv_cache_memory_bytes=None if g.num_gpus else g.kv_cache_memory_bytes,
        seed=cfg.sampling.seed,
        num_replicas=g.num_replicas,
        num_cpus=g.num_cpus,
        num_gpus=g.num_gpus,
    )


def run_generate(ctx: IterationContext, stage: Stage) -> dict[str, Any]:
    """Sample the iteration's prompts and write one generation record per prompt."""
    cfg, storage, path = ctx.cfg, ctx.storage, ctx.path("generations")
    if storage.is_complete(path):
        stage.already_done()
        return storage.marker(path)
    rows = read_sft(cfg.data)
    usable, bad = index_rows(rows, cfg.data.bad_rows)
    selection = select_prompts(
        usable, count=ctx.iteration.prompts, held_out=cfg.data.held_out_prompts, seed=cfg.data.seed, iteration=ctx.k
    )
    if not selection.train:
        raise ValueError(f"no usable SFT rows in {cfg.data.path or cfg.data.source} ({len(bad)} unusable)")
    app_name = generator_app_name(cfg)
    serve_model(generator_args(ctx), app_name, ctx.model_uri, ctx.k)
    generator = generator_info(app_name)
    split = {(r.source, r.row): "train" for r in selection.train}
    split |= {(r.source, r.row): "held_out" for r in selection.held_out}
    generations = generation_dataset(
        keep_rows(rows, split),
        tokenizer_path=ctx.model_uri,
        app_name=app_name,
        deployment_name=DEPLOYMENT_NAME,
        iteration=ctx.k,
        model_version=ctx.k,
        sampling=cfg.sampling.model_dump(),
        max_prompt_length=cfg.train.max_prompt_length,
        max_length=cfg.train.max_length,
        timeout_s=cfg.generator.request_timeout_s,
        prompts_per_request=cfg.generator.prompts_per_request,
        callers=cfg.generator.callers,
    )
    meta = {
        "prompts": len(selection.train),
        "unique_prompts": selection.unique_prompts,
        "duplicate_rows": selection.duplicate_rows,
        "bad_rows": len(bad),
        "bad_row_examples": bad[:10],
        "held_out_prompts": len(selection.held_out),
        "generator": generator.model_dump() if generator else None,
    }
    expected = len(selection.train) + len(selection.held_out)
    stage.update(0, expected)
    started, generated_tokens = time.perf_counter(), 0

    def on_batch(rows: int, batch: pa.Table) -> None:
        nonlocal generated_tokens
        generated_tokens += pc.sum(batch["generated_tokens"]).as_py()
        tokens_per_s = round(generated_tokens / (time.perf_counter() - started), 1)
        meta.update(generated_tokens=generated_tokens, tokens_per_s=tokens_per_s)  # the marker is written last
        stage.update(rows, tokens_per_s=tokens_per_s)

    rows_written = write_records(generations, storage, path, GENERATION_SCHEMA, meta=meta, on_batch=on_batch)
    if rows_written != expected:
        storage.discard(path)
        raise RuntimeError(f"generated {rows_written} records for {expected} prompts")
    return storage.marker(path)
