"""Generation: the project's Serve deployment (through its handle and through the Ray Data stage) against a
bare vLLM engine and against transformers `generate` (the official SPIN code path).

    python -m tests.bench.run generation

Same model, prompts, sampling (T=1, top-p 1, one seed per prompt) and token budget in every case. Tokens/s
counts the tokens each engine actually generated (up to and including EOS) over the generation wall time;
engine start-up is reported apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from tests.bench.common import (
    Row,
    Size,
    bench_messages,
    bench_prompts,
    case_main,
    measured_rows,
    peak_rss_mb,
    prepare_model,
)

PROMPTS_PER_REQUEST = 32  # the generate stage's default (GeneratorConfig.prompts_per_request)
MAX_MODEL_LEN = 512


def _use_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _result(tokens: int, seconds: float, startup_s: float, prompts: int) -> dict[str, Any]:
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "startup_s": startup_s,
        "prompts": prompts,
        "mean_tokens": tokens / prompts,
        "peak_rss_mb": peak_rss_mb(),
    }


def hf_generate(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """Batched `generate` with left padding, as the official SPIN scripts sample."""
    import torch

    from jobs.chat import pad_id
    from jobs.hf import load_causal_lm, load_tokenizer

    model_dir = prepare_model(size.model)
    prompts = bench_prompts(model_dir, size.prompts, size.seed)
    start = time.perf_counter()
    device = "cuda" if _use_gpu() else "cpu"
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir, size.dtype, device)
    startup, pad, eos = time.perf_counter() - start, pad_id(tok), tok.eos_token_id
    batch_size = int(extra.get("batch_size", 16))
    torch.manual_seed(size.seed)
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        rows = prompts[i : i + batch_size]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=size.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for row in out[:, width:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return _result(tokens, time.perf_counter() - start, startup, len(prompts))


def bare_vllm(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """vLLM's offline `LLM` in this process, with the engine settings the deployment uses."""
    import os

    from cluster.runtime import vllm_env
    from services.generator.deployment import engine_kwargs

    os.environ.update(vllm_env(_use_gpu()))
    from vllm import LLM, SamplingParams, TokensPrompt

    model_dir = prepare_model(size.model)
    prompts = bench_prompts(model_dir, size.prompts, size.seed)
    args = _generator_args(model_dir, size)
    start = time.perf_counter()
    llm = LLM(**engine_kwargs(args, model_dir))
    startup = time.perf_counter() - start
    params = [
        SamplingParams(temperature=1.0, top_p=1.0, max_tokens=size.max_new_tokens, seed=size.seed + i)
        for i in range(len(prompts))
    ]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return _result(tokens, seconds, startup, len(prompts))


def sample_logps_parity(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """`pairs.sample_logps: generator`'s premise: vLLM's log-prob of each token it sampled (at T=1, top-p 1) summed
    over an answer equals the trainer's forward pass on that answer (`policy_logps`, the score stage's)."""
    import os

    import torch

    from cluster.runtime import vllm_env
    from jobs.chat import pad_id
    from jobs.config import TrainConfig
    from jobs.hf import load_causal_lm, load_tokenizer
    from jobs.iteration.train_step import policy_logps
    from jobs.spin.collate import collate_pairs
    from services.generator.deployment import engine_kwargs, sampled_token_logps

    os.environ.update(vllm_env(_use_gpu()))
    from vllm import LLM, SamplingParams, TokensPrompt

    model_dir = prepare_model(size.model)
    prompts = bench_prompts(model_dir, size.prompts, size.seed)
    llm = LLM(**engine_kwargs(_generator_args(model_dir, size), model_dir))
    params = [
        SamplingParams(temperature=1.0, top_p=1.0, max_tokens=size.max_new_tokens, seed=size.seed + i, logprobs=0)
        for i in range(len(prompts))
    ]
    samples = [o.outputs[0] for o in llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)]
    answers = [list(c.token_ids) for c in samples]
    vllm_sums = [sum(sampled_token_logps(c)) for c in samples]
    device = "cuda" if _use_gpu() else "cpu"
    model = load_causal_lm(model_dir, size.dtype, device).eval()
    batch = collate_pairs(prompts, answers, answers, pad_id=pad_id(load_tokenizer(model_dir))).to(device)
    with torch.no_grad():
        forward, _, _ = policy_logps(model, batch, TrainConfig().logprob_chunk_tokens)
    differences = [abs(a - float(b)) for a, b in zip(vllm_sums, forward.tolist(), strict=True)]
    return {
        "answers": len(answers),
        "tokens": sum(len(a) for a in answers),
        "max_abs_diff": max(differences),
        "mean_abs_diff": sum(differences) / len(differences),
        "max_diff_per_token": max(d / max(1, len(a)) for d, a in zip(differences, answers, strict=True)),
        "mean_abs_logp": sum(abs(v) for v in vllm_sums) / len(vllm_sums),
    }


def _generator_args(model_dir: str, size: Size) -> Any:
    from services.generator.schemas import GeneratorArgs

    gpu = _use_gpu()
    return GeneratorArgs(
        model_path=model_dir,
        dtype=size.dtype,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=64,
        kv_cache_memory_bytes=None if gpu else 256 * 2**20,
        seed=size.seed,
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )


@contextlib.contextmanager
def _deployed(size: Size) -> Iterator[tuple[str, str, float]]:
    """The project's generator application on a local Ray cluster: (model dir, app name, start-up seconds)."""
    from cluster.runtime import connect, head_running, start_head, stop_head
    from services.generator.client import serve_model, stop_serving

    started_head = not head_running()
    start_head(num_cpus=4)
    connect("127.0.0.1:6379")
    model_dir, app = prepare_model(size.model), "spin-bench-generator"
    try:
        start = time.perf_counter()
        serve_model(_generator_args(model_dir, size), app, model_dir, 0)
        yield model_dir, app, time.perf_counter() - start
    finally:
        stop_serving(app)
        if started_head:
            stop_head()


def _through_handle(size: Size, model_dir: str, app: str) -> dict[str, Any]:
    """Requests of 32 prompts, all in flight at once, through the deployment handle."""
    from services.generator.client import generator_handle
    from services.generator.schemas import GenerateRequest

    prompts = bench_prompts(model_dir, size.prompts, size.seed)
    handle = generator_handle(app)
    start = time.perf_counter()
    responses = [
        handle.generate.remote(
            GenerateRequest(
                prompt_token_ids=prompts[i : i + PROMPTS_PER_REQUEST],
                max_tokens=[size.max_new_tokens] * len(prompts[i : i + PROMPTS_PER_REQUEST]),
                temperature=1.0,
                top_p=1.0,
                seeds=[size.seed + j for j in range(i, min(i + PROMPTS_PER_REQUEST, len(prompts)))],
            )
        )
        for i in range(0, len(prompts), PROMPTS_PER_REQUEST)
    ]
    tokens = sum(len(c.token_ids) for r in responses for c in r.result(timeout_s=1800).completions)
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "prompts": len(prompts)}


def _sft_rows(prompts: int, seed: int) -> Any:
    import json

    import pyarrow as pa

    messages = bench_messages(prompts, seed)
    return pa.table(
        {
            "prompt_id": [f"p{i}" for i in range(len(messages))],
            "split": ["train"] * len(messages),
            "messages": [json.dumps(m) for m in messages],
            "real": ["unused"] * len(messages),
        }
    )


def _through_stage(size: Size, extra: dict[str, Any], model_dir: str, app: str) -> dict[str, Any]:
    """The generate stage's Ray Data pipeline: SFT rows → caller tasks → the deployment → records.

    `pool_startup_s` is the same pipeline on one prompt and one token: the callers' start on its own (the first
    dataset's tasks start worker processes and load the tokenizer; a later dataset's reuse them)."""
    import pyarrow.compute as pc
    import ray.data

    from jobs.config import GeneratorConfig, SamplingConfig
    from jobs.iteration.generate import CallerSpec, generation_dataset

    defaults = GeneratorConfig()
    callers = int(extra.get("callers", defaults.callers))
    per_request = int(extra.get("prompts_per_request", defaults.prompts_per_request))
    spec = CallerSpec(
        tokenizer_path=model_dir,
        app_name=app,
        iteration=0,
        model_version=0,
        sampling=SamplingConfig(max_new_tokens=size.max_new_tokens, seed=size.seed),
        max_prompt_length=MAX_MODEL_LEN // 2,
        max_length=MAX_MODEL_LEN,
        timeout_s=1800,
    )
    one = spec.model_copy(update={"sampling": SamplingConfig(max_new_tokens=1, seed=size.seed)})
    start = time.perf_counter()
    generation_dataset(ray.data.from_arrow(_sft_rows(1, size.seed)), one, 1, callers).materialize()
    pool_startup = time.perf_counter() - start
    start, first, tokens = time.perf_counter(), 0.0, 0
    records = generation_dataset(ray.data.from_arrow(_sft_rows(size.prompts, size.seed)), spec, per_request, callers)
    for batch in records.iter_batches(batch_format="pyarrow", batch_size=None):
        tokens += pc.sum(batch["generated_tokens"]).as_py() or 0
        first = first or time.perf_counter() - start
    return {
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "prompts": size.prompts,
        "pool_startup_s": pool_startup,
        "first_batch_s": first,
        "callers": callers,
        "prompts_per_request": per_request,
    }


MANY = 16  # the cases that amortise start-up: 1,024 prompts at the default size


def through_ray(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """Three cases against one deployment, in this order: `serve_handle`, `ray_data` (the stage at the bench's
    size) and `ray_data_many` (at MANY times it). Sharing it measures each against the same engine, and a
    deployment's start (a Ray head, Serve, the replica's vLLM engine: 45-60 s on 2 cores) is paid once, not
    three times; its seconds are every case's `startup_s`. The engine's first batches fall to `serve_handle`,
    as they fall to `bare_vllm` in its own process."""
    with _deployed(size) as (model_dir, app, startup):
        measured = {
            "serve_handle": _through_handle(size, model_dir, app),
            "ray_data": _through_stage(size, extra, model_dir, app),
            "ray_data_many": _through_stage(replace(size, prompts=size.prompts * MANY), extra, model_dir, app),
        }
    return {
        "cases": {name: r | _result(r["tokens"], r["seconds"], startup, r["prompts"]) for name, r in measured.items()}
    }


def bare_vllm_many(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    return bare_vllm(replace(size, prompts=size.prompts * MANY), extra)


CASES = {
    "hf_generate": hf_generate,
    "bare_vllm": bare_vllm,
    "sample_logps_parity": sample_logps_parity,
    "bare_vllm_many": bare_vllm_many,
    "through_ray": through_ray,  # serve_handle, ray_data, ray_data_many
}


def rows(results: dict[str, dict[str, Any]], on_gpu: bool) -> list[Row]:
    """Tokens/s of each case, the ratios the issue sets targets for, and the sample log-probs' parity."""
    out = _parity_rows(results.get("sample_logps_parity", {}))
    for case in ("ray_data", "ray_data_many"):
        if "pool_startup_s" in results.get(case, {}):
            out.append(Row("generation", case, "callers' start-up", results[case]["pool_startup_s"], "s"))
    return out + measured_rows(
        "generation",
        results,
        "tokens_per_s",
        "tokens/s",
        "tok/s",
        [
            ("serve_handle", "bare_vllm", {"at_least": 0.95}),
            ("ray_data", "bare_vllm", {}),
            ("ray_data_many", "bare_vllm_many", {"at_least": 0.9}),
            ("bare_vllm", "hf_generate", {"at_least": 5.0 if on_gpu else 2.0}),
            ("hf_generate", None, {}),
        ],
    )


def _parity_rows(parity: dict[str, Any]) -> list[Row]:
    """The largest difference per answer between vLLM's summed sample log-probs and the trainer's; the tolerance
    (0.01 nats, a margin error of 0.001 at β 0.1) is what tests/integration/test_iteration.py holds it to."""
    if "max_abs_diff" not in parity:
        return []
    value = parity["max_abs_diff"]
    metric = f"max |Δ log p| per answer ({parity['answers']} answers)"
    return [Row("generation", "sample_logps_parity", metric, value, "nats", None, None, "< 0.01", value < 0.01)]


if __name__ == "__main__":
    case_main(CASES)
