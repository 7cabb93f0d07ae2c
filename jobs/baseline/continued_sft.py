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

import ray
import torch

from cluster.files import local_copy
from jobs.baseline.sft import response_logps, sft_on_tokens
from jobs.chat import pad_id
from jobs.config import SpinConfig
from jobs.hf import load_causal_lm, load_tokenizer
from jobs.iteration.context import IterationContext
from jobs.iteration.data import read_pairs, to_table
from jobs.iteration.evaluate import evaluate_served, held_out_table
from jobs.metrics import BaselineMetrics
from jobs.report.results import load_run
from jobs.spin.metrics import response_nll
from jobs.storage import CONTINUED_SFT, RunStorage
from services.generator.client import stop_serving

BASELINE_VERSION = -1  # the generator's version number for a model that is not an iteration's


def _train_task(
    model_uri: str, storage_uri: str, out_path: str, data: list[tuple[list[int], list[int]]], steps: int, **kwargs: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = sft_on_tokens(local_copy(model_uri), tmp, data, steps=steps, **kwargs)
        RunStorage(storage_uri).upload_dir(tmp, out_path, {"steps": steps, "batch_size": kwargs["batch_size"]})
    return result


def run_continued_sft(cfg: SpinConfig) -> BaselineMetrics:
    learning_rate = cfg.eval.continued_sft_learning_rate
    if learning_rate is None:
        raise ValueError("set eval.continued_sft_learning_rate to train the continued-SFT baseline")
    record = load_run(cfg.storage_uri)
    if not record.iterations:
        raise ValueError(f"{cfg.storage_uri} has no finished iteration to match the compute of")
    storage = RunStorage(cfg.storage_uri)
    steps = sum(m.train.steps for m in record.iterations)
    table = to_table(read_pairs(storage, [m.iteration for m in record.iterations], "train"))
    data = list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    model_path, batch_size = storage.baseline(CONTINUED_SFT, "model"), 2 * cfg.train.global_batch_size
    resources = {"num_gpus": 1} if cfg.train.use_gpu else {"num_cpus": max(1.0, cfg.train.cpus_per_worker)}
    train = ray.remote(**resources)(_train_task).remote(
        cfg.model.path,
        storage.uri,
        model_path,
        data,
        steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 10),
        schedule="linear",
    )
    training = ray.get(train)

    ctx = IterationContext.create(cfg, 0)  # held-out prompts and generator settings, as in iteration 0
    ctx.serve(storage.uri_of(model_path), BASELINE_VERSION)
    try:
        scores = evaluate_served(ctx, BASELINE_VERSION)
    finally:
        stop_serving(ctx.generator_app)
    metrics = BaselineMetrics.model_validate(
        scores.model_dump()
        | {
            "nll/real": held_out_nll(ctx, storage.local_path(model_path)),
            "train": {
                "steps": steps,
                "batch_size": batch_size,
                "examples": len(data),
                "learning_rate": learning_rate,
                "final_loss": training["final_loss"],
            },
        }
    )
    storage.write_json(storage.baseline(CONTINUED_SFT, "metrics.json"), metrics.model_dump(mode="json"))
    return metrics


@torch.no_grad()
def held_out_nll(ctx: IterationContext, model_dir: str) -> float:
    """Per-token NLL of the held-out real responses under a model, by the trainer's forward pass (the SPIN
    models' `nll/real` is measured the same way)."""
    table = held_out_table(ctx)
    data = list(zip(table.column("prompt_ids").to_pylist(), table.column("real_ids").to_pylist(), strict=True))
    model, pad, step = load_causal_lm(model_dir).eval(), pad_id(load_tokenizer(model_dir)), ctx.train.micro_batch_size
    logps, tokens = zip(
        *(response_logps(model, data[i : i + step], pad) for i in range(0, len(data), step)), strict=True
    )
    return float(response_nll(torch.cat(logps), torch.cat(tokens)))
