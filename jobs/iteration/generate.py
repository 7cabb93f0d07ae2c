"""Generate stage: Ray Data streams the iteration's prompts through the generator deployment.

SFT rows ─ keep sampled rows ─ caller tasks ──(Serve handle)──► SpinGenerator (vLLM)
                                    │
                                    └─► generation records (iter_<k>/generations/)

The callers are Ray Data tasks, not an actor pool: a task runs in a worker process that Ray keeps and reuses, with
the tokenizer it loaded (`_tokenizer`), while each actor pool started new processes, each importing transformers
and loading the tokenizer again (tests/bench, SmolLM2 on 2 cores: a second dataset's 2 callers started in 13 s as
an actor pool, 0.3 s as tasks).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from pydantic import BaseModel, ConfigDict

from cluster.files import local_copy
from jobs.chat import encode_example
from jobs.config import PairsConfig, SamplingConfig
from jobs.hf import load_tokenizer
from jobs.iteration.context import IterationContext
from jobs.iteration.data import index_rows, keep_rows, read_sft, write_records
from jobs.metrics import GenerateSummary
from jobs.progress import Stage
from jobs.records import EVAL_PROMPT_SCHEMA, GENERATION_SCHEMA
from jobs.spin.metrics import answer_match
from jobs.spin.pairs import (
    PromptSelection,
    completed_response,
    pick_generated,
    sample_key,
    select_prompts,
)
from services.generator.client import generate, generator_handle, generator_info
from services.generator.schemas import GenerateRequest

CALLER_CPUS = 0.25  # the callers only tokenize and wait on the deployment


class CallerSpec(BaseModel):
    """What a GeneratorCaller (or a PromptEncoder) needs: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    tokenizer_path: str
    app_name: str
    iteration: int
    model_version: int
    sampling: SamplingConfig
    pairs: PairsConfig = PairsConfig()
    answer_pattern: str | None = None  # the task metric's, for pairs.rule "incorrect"
    long_prompts: Literal["truncate", "skip"] = "truncate"
    max_prompt_length: int
    max_length: int
    timeout_s: float


@dataclass(frozen=True)
class Encoded:
    prompts: list[list[int]]  # rendered with the chat template, fitted to max_prompt_length with it whole
    budgets: list[int]  # tokens a response may take
    real_ids: list[list[int]]
    prompt_cut: list[bool]
    real_cut: list[bool]


@functools.lru_cache(maxsize=2)
def _tokenizer(location: str) -> Any:
    """The tokenizer at `location`, loaded once per worker process (an iteration's model and the next's)."""
    return load_tokenizer(local_copy(location))


def _load_tokenizer(location: str) -> None:
    _tokenizer(location)


def warm_callers(ctx: IterationContext) -> list[ray.ObjectRef[None]]:
    """Start the caller tasks' worker processes, each loading the tokenizer, while the generator starts: Ray then
    runs the stage's first caller tasks in them. A cold worker took 6-7 s to import transformers and load the
    tokenizer on 2 cores, most of the first records' wait, while the generator's start keeps one process busy."""
    load = ray.remote(num_cpus=CALLER_CPUS)(_load_tokenizer)
    return [load.remote(ctx.model_uri) for _ in range(ctx.cfg.generator.callers)]


class PromptEncoder:
    """SFT rows (with their split) → evaluation prompt records, tokenized as the caller does."""

    def __init__(self, spec: CallerSpec):
        self.spec = spec
        self.tokenizer = _tokenizer(spec.tokenizer_path)

    def encode(self, batch: pa.Table) -> Encoded:
        spec = self.spec
        examples = [
            encode_example(
                self.tokenizer, json.loads(m), r, spec.max_prompt_length, spec.max_length, spec.sampling.max_new_tokens
            )
            for m, r in zip(batch.column("messages").to_pylist(), batch.column("real").to_pylist(), strict=True)
        ]
        if not examples:
            return Encoded([], [], [], [], [])
        prompts, reals, budgets, prompt_cuts, cuts = (list(column) for column in zip(*examples, strict=True))
        return Encoded(prompts, budgets, reals, prompt_cuts, cuts)

    def __call__(self, batch: pa.Table) -> pa.Table:
        e = self.encode(batch)
        return pa.table(
            {
                "prompt_id": batch.column("prompt_id"),
                "split": batch.column("split"),
                "prompt": [self.tokenizer.decode(p) for p in e.prompts],
                "real": batch.column("real"),
                "prompt_ids": e.prompts,
                "real_ids": e.real_ids,
                "real_tokens": [len(r) for r in e.real_ids],
            },
            schema=EVAL_PROMPT_SCHEMA,
        )


class GeneratorCaller(PromptEncoder):
    """Tokenizes a batch of prompts with the chat template, asks the generator for k samples of each, and picks
    each pair's generated side by the pair rule."""

    def __init__(self, spec: CallerSpec):
        super().__init__(spec)
        self.handle = generator_handle(spec.app_name)

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec, tok = self.spec, self.tokenizer
        pids, reals = batch.column("prompt_id").to_pylist(), batch.column("real").to_pylist()
        e = self.encode(batch)
        k = spec.pairs.samples_per_prompt
        completions = self._generate(pids, e.prompts, e.budgets)
        samples = [completions[i * k : (i + 1) * k] for i in range(len(pids))]
        picks = [
            self._pick(real, real_text, group)
            for real, real_text, group in zip(e.real_ids, reals, samples, strict=True)
        ]
        chosen = [group[p] if p >= 0 else None for group, p in zip(samples, picks, strict=True)]
        generated_ids = [
            real if c is None else completed_response(c.token_ids, c.finish_reason == "stop", tok.eos_token_id)
            for real, c in zip(e.real_ids, chosen, strict=True)
        ]
        n = len(pids)
        return pa.table(
            {
                "prompt_id": pids,
                "split": batch.column("split"),
                "iteration": [spec.iteration] * n,
                "model_version": [spec.model_version] * n,
                "prompt": [tok.decode(p) for p in e.prompts],  # the rendered template, as truncated
                "real": reals,
                "generated": [r if c is None else c.text for r, c in zip(reals, chosen, strict=True)],
                "prompt_ids": e.prompts,
                "real_ids": e.real_ids,
                "generated_ids": generated_ids,
                "generated_token_logps": [
                    None if c is None or c.token_logps is None or len(c.token_logps) != len(g) else c.token_logps
                    for c, g in zip(chosen, generated_ids, strict=True)
                ],
                "prompt_tokens": [len(p) for p in e.prompts],
                "real_tokens": [len(r) for r in e.real_ids],
                "generated_tokens": [len(g) for g in generated_ids],
                "real_truncated": e.real_cut,
                "prompt_truncated": e.prompt_cut,
                "finish_reason": ["replay" if c is None else c.finish_reason for c in chosen],
                "samples": [k] * n,
                "sampled_tokens": [sum(len(c.token_ids) for c in group) for group in samples],
                "pick": picks,
                "kept": [
                    (p >= 0 or spec.pairs.no_negative == "replay") and not (cut and spec.long_prompts == "skip")
                    for p, cut in zip(picks, e.prompt_cut, strict=True)
                ],
            },
            schema=GENERATION_SCHEMA,
        )

    def _pick(self, real_ids: list[int], real_text: str, group: list[Any]) -> int:
        """The qualifying sample's index, or -1 (the real answer then stands on both sides, or the pair is dropped)."""
        eos = self.tokenizer.eos_token_id
        tokens = [completed_response(c.token_ids, c.finish_reason == "stop", eos) for c in group]
        correct = None
        if self.spec.pairs.rule == "incorrect":
            assert self.spec.answer_pattern is not None  # the config validator guarantees it
            correct = [answer_match([c.text], [real_text], self.spec.answer_pattern)[0] == 1.0 for c in group]
        picked = pick_generated(real_ids, tokens, self.spec.pairs.rule, correct)
        return -1 if picked is None else picked

    def _generate(self, pids: list[str], prompts: list[list[int]], budgets: list[int]) -> list[Any]:
        spec, s = self.spec, self.spec.sampling
        request = GenerateRequest(
            prompt_token_ids=prompts,
            max_tokens=budgets,
            temperature=s.temperature,
            top_p=s.top_p,
            n=spec.pairs.samples_per_prompt,
            token_logps=spec.pairs.sample_logps == "generator",
            # One seed per (iteration, prompt): the same answer however prompts are batched or retried.
            seeds=[sample_key(s.seed, "generate", spec.iteration, pid) % 2**31 for pid in pids],
        )
        response = generate(self.handle, request, spec.timeout_s)
        if not response.produced_by(spec.model_version):
            raise RuntimeError(
                f"iteration {spec.iteration} must sample from model version {spec.model_version}, but the generator "
                f"served version {response.model_version} and its engine sampled with weights {response.sampled_with()}"
            )
        if any(c.finish_reason == "abort" for c in response.completions):
            raise RuntimeError("the generator aborted requests; their outputs would be cut short")
        return list(response.completions)


def _encode_prompts(batch: pa.Table, spec: CallerSpec) -> pa.Table:
    return PromptEncoder(spec)(batch)


def _call_generator(batch: pa.Table, spec: CallerSpec) -> pa.Table:
    return GeneratorCaller(spec)(batch)  # the handle is asked for per batch: generator_handle checks its client


def generation_dataset(
    rows: ray.data.Dataset, spec: CallerSpec, prompts_per_request: int, callers: int
) -> ray.data.Dataset:
    """SFT rows (with their split) mapped to generation records by up to `callers` tasks calling the deployment."""
    # One request's prompts per block: a task takes a whole block, and a block of thousands of rows kept one
    # caller (one request in flight) busy while the others waited.
    rows = rows.repartition(target_num_rows_per_block=prompts_per_request)
    return rows.map_batches(
        functools.partial(_call_generator, spec=spec),
        batch_size=prompts_per_request,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=callers),
        num_cpus=CALLER_CPUS,
    )


def run_generate(ctx: IterationContext, stage: Stage) -> GenerateSummary:
    """Sample the iteration's training and validation prompts and write one generation record per prompt (the
    generator must be serving model k); the first iteration also records the run's evaluation prompts."""
    cfg, storage, path = ctx.cfg, ctx.storage, ctx.storage.generations(ctx.k)
    if storage.is_complete(path):
        stage.already_done()
        return GenerateSummary.model_validate(storage.marker(path))
    rows = read_sft(cfg.data)
    usable, bad = index_rows(rows, cfg.data.bad_rows)
    d = cfg.data
    selection = select_prompts(
        usable,
        count=ctx.iteration.prompts,
        validation=d.validation_prompts,
        test=d.test_prompts,
        seed=d.seed,
        iteration=ctx.k,
    )
    if not selection.train:
        raise ValueError(f"no usable SFT rows in {d.path or d.source} ({len(bad)} unusable)")
    spec = CallerSpec(
        tokenizer_path=ctx.model_uri,
        app_name=ctx.generator_app,
        iteration=ctx.k,
        model_version=ctx.k,
        sampling=cfg.sampling,
        pairs=cfg.pairs,
        answer_pattern=cfg.eval.answer_pattern if cfg.eval.task != "none" else None,
        long_prompts=cfg.data.long_prompts,
        max_prompt_length=ctx.train.max_prompt_length,
        max_length=ctx.train.max_length,
        timeout_s=cfg.generator.request_timeout_s,
    )
    if not storage.is_complete(storage.eval_prompts()) and (selection.validation or selection.test):
        _write_eval_prompts(ctx, rows, selection, spec)
    split = {(r.source, r.row): "train" for r in selection.train}
    split |= {(r.source, r.row): "validation" for r in selection.validation}
    g = cfg.generator
    generations = generation_dataset(keep_rows(rows, split), spec, g.prompts_per_request, g.callers)
    generator = generator_info(ctx.generator_app)
    meta: dict[str, Any] = {
        "prompts": len(selection.train),
        "unique_prompts": selection.unique_prompts,
        "duplicate_rows": selection.duplicate_rows,
        "bad_rows": len(bad),
        "bad_row_examples": bad[:10],
        "validation_prompts": len(selection.validation),
        "test_prompts": len(selection.test),
        "generator": generator.model_dump() if generator else None,
    }
    _write_generations(ctx, stage, generations, meta, len(selection.train) + len(selection.validation))
    return GenerateSummary.model_validate(storage.marker(path))


def _write_eval_prompts(
    ctx: IterationContext, rows: ray.data.Dataset, selection: PromptSelection, spec: CallerSpec
) -> None:
    """The validation and test prompts, tokenized as training's are: the same for every model the run evaluates."""
    split = {(r.source, r.row): "validation" for r in selection.validation}
    split |= {(r.source, r.row): "test" for r in selection.test}
    encoded = keep_rows(rows, split).map_batches(
        functools.partial(_encode_prompts, spec=spec),
        batch_size=1024,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=1),
        num_cpus=CALLER_CPUS,
    )
    expected = len(selection.validation) + len(selection.test)
    write_records(encoded, ctx.storage, ctx.storage.eval_prompts(), EVAL_PROMPT_SCHEMA, expected=expected)


def _write_generations(
    ctx: IterationContext, stage: Stage, generations: ray.data.Dataset, meta: dict[str, Any], expected: int
) -> None:
    """Stream the records into storage, following tokens per second; the marker carries `meta`, written last."""
    storage, path = ctx.storage, ctx.storage.generations(ctx.k)
    stage.update(0, expected)
    started, counts = time.perf_counter(), Counter[str]()

    def on_batch(rows: int, batch: pa.Table) -> None:
        counts.update(_pair_counts(batch))
        tokens_per_s = round(counts["sampled_tokens"] / (time.perf_counter() - started), 1)
        meta.update(dict(counts), tokens_per_s=tokens_per_s)
        stage.update(rows, tokens_per_s=tokens_per_s, sampled_tokens=counts["sampled_tokens"])

    write_records(
        generations, storage, path, GENERATION_SCHEMA, meta=meta, on_batch=on_batch, expected=expected, stage=stage
    )


def _pair_counts(batch: pa.Table) -> dict[str, int]:
    """What a batch of generation records adds to the stage's counts."""
    train = batch.filter(pc.equal(batch.column("split"), "train"))
    identical = [
        r == g
        for r, g in zip(train.column("real_ids").to_pylist(), train.column("generated_ids").to_pylist(), strict=True)
    ]
    return {
        "sampled_tokens": pc.sum(batch["sampled_tokens"]).as_py() or 0,
        "generated_tokens": pc.sum(batch["generated_tokens"]).as_py() or 0,
        "identical_pairs": sum(identical),
        "without_negative": pc.sum(pc.equal(train.column("pick"), -1)).as_py() or 0,
        "skipped_prompts": pc.sum(pc.invert(train.column("kept"))).as_py() or 0,
        "truncated_prompts": pc.sum(batch.column("prompt_truncated")).as_py() or 0,
    }
