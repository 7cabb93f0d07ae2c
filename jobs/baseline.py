"""The "continued SFT at equal compute" baseline: what the SFT model gains from more of plain SFT instead.

SPIN's optimizer steps over the run are counted, and the SFT model is fine-tuned for as many steps on the
same prompts' real responses, with twice SPIN's global batch per step (a SPIN step runs B pairs, i.e. 2B
sequences, forward and backward). It is then evaluated exactly as the SPIN models were: the run's generator
serves it and answers the held-out prompts greedily.

    spin baseline CONFIG       (after the run's iterations; `make demo` does it)
"""

from __future__ import annotations

import tempfile
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from cluster.weights import serve_model, stop_serving
from jobs.config import SpinConfig
from jobs.context import IterationContext
from jobs.generate import generator_app_name, generator_args
from jobs.held_out import evaluate_served_model, held_out_table
from jobs.report import CONTINUED_SFT, load_run
from jobs.storage import RunStorage, local_copy

BASELINE_VERSION = -1  # the generator's version number for a model that is not an iteration's


def _train_task(
    model_uri: str,
    storage_uri: str,
    out_path: str,
    data: list[tuple[list[int], list[int]]],
    steps: int,
    batch_size: int,
    learning_rate: float,
) -> dict[str, Any]:
    from jobs.sft import sft_on_tokens

    with tempfile.TemporaryDirectory() as tmp:
        result = sft_on_tokens(
            local_copy(model_uri),
            tmp,
            data,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=max(1, steps // 10),
            schedule="linear",
        )
        RunStorage(storage_uri).upload_dir(tmp, out_path, {"steps": steps, "batch_size": batch_size})
    return result


def run_continued_sft(cfg: SpinConfig) -> dict[str, Any]:
    learning_rate = cfg.eval.continued_sft_learning_rate
    if learning_rate is None:
        raise ValueError("set eval.continued_sft_learning_rate to train the continued-SFT baseline")
    record = load_run(cfg.storage_uri)
    if not record.iterations:
        raise ValueError(f"{cfg.storage_uri} has no finished iteration to match the compute of")
    storage = RunStorage(cfg.storage_uri)
    steps = sum(m["train"]["steps"] for m in record.iterations)
    data = []
    for m in record.iterations:
        table = pq.read_table(storage.iteration_path(m["iteration"], "pairs"), filesystem=storage.fs)
        table = table.filter(pc.equal(table.column("split"), "train"))
        data += list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    model_path = storage.path(CONTINUED_SFT, "model")
    resources = {"num_gpus": 1} if cfg.train.use_gpu else {"num_cpus": max(1.0, cfg.train.cpus_per_worker)}
    train = ray.remote(**resources)(_train_task).remote(
        cfg.model.path, storage.uri, model_path, data, steps, 2 * cfg.train.global_batch_size, learning_rate
    )
    training = ray.get(train)

    ctx = IterationContext.create(cfg, 0)  # held-out prompts and generator settings, as in iteration 0
    app = generator_app_name(cfg)
    serve_model(generator_args(ctx), app, storage.uri_of(model_path), BASELINE_VERSION)
    try:
        scores = evaluate_served_model(ctx, app, BASELINE_VERSION)
    finally:
        stop_serving(app)
    metrics = scores | {
        "nll/real": _held_out_nll(ctx, storage.local_path(model_path)),
        "train": {
            "steps": steps,
            "batch_size": 2 * cfg.train.global_batch_size,
            "examples": len(data),
            "learning_rate": learning_rate,
            "final_loss": training["final_loss"],
        },
    }
    storage.write_json(storage.path(CONTINUED_SFT, "metrics.json"), metrics)
    return metrics


def _held_out_nll(ctx: IterationContext, model_dir: str) -> float:
    """Per-token NLL of the held-out real responses under the baseline model (as for the SPIN models)."""
    import torch

    from jobs.chat import pad_id
    from jobs.modeling import load_causal_lm, load_tokenizer
    from jobs.sft import response_nll

    table = held_out_table(ctx)
    data = list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    model, pad = load_causal_lm(model_dir).eval(), pad_id(load_tokenizer(model_dir))
    tokens = sum(len(r) for _, r in data)
    with torch.no_grad():
        total = sum(
            float(response_nll(model, data[i : i + 32], pad)) * sum(len(r) for _, r in data[i : i + 32])
            for i in range(0, len(data), 32)
        )
    return total / tokens
