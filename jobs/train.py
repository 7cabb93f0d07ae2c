"""Train stage, driver side: build the pair dataset and run the Ray Train `TorchTrainer`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from jobs.context import IterationContext
from jobs.datasets import READ_CPUS, read_records
from jobs.progress import Stage
from jobs.spin import training_iterations
from jobs.train_loop import STATE_FILE, TrainJob, train_loop_per_worker


def _drop_identical(batch: pa.Table) -> pa.Table:
    same = [
        r == g
        for r, g in zip(batch.column("real_ids").to_pylist(), batch.column("generated_ids").to_pylist(), strict=True)
    ]
    return batch.filter(pc.invert(pa.array(same, pa.bool_())))


def training_pairs(ctx: IterationContext) -> ray.data.Dataset:
    """Pairs of this iteration and, when mixing, of the previous one, shuffled with a fixed seed."""
    paths = [ctx.storage.iteration_path(j, "pairs") for j in training_iterations(ctx.k, ctx.iteration.mix_previous)]
    ds = read_records(ctx.storage, paths)
    if ctx.cfg.train.drop_identical_pairs:
        ds = ds.map_batches(_drop_identical, batch_format="pyarrow", batch_size=None, num_cpus=READ_CPUS)
    return ds.random_shuffle(seed=ctx.cfg.train.seed + ctx.k).materialize()


def run_train(ctx: IterationContext, stage: Stage, pad_id: int) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    t = ctx.cfg.train
    pairs = training_pairs(ctx)
    num_pairs = pairs.count()
    job = TrainJob(
        model_uri=ctx.model_uri,
        storage_uri=ctx.storage.uri,
        output_path=ctx.path("model"),
        save_dtype=ctx.cfg.model.dtype,
        train=t,
        iteration=ctx.iteration,
        num_pairs=num_pairs,
        pad_id=pad_id,
    )
    progress: Any = Queue(actor_options={"num_cpus": 0})
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "progress": progress},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=ctx.storage.uri_of(ctx.path()),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": pairs},
    )
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            try:
                event = progress.get(timeout=0.5)
            except Empty:
                continue
            stage.update(
                event["step"],
                event["total_steps"],
                loss=event["loss"],
                margin=event["margin"],
                acc=event["rewards/accuracies"],
            )

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    try:
        result = trainer.fit()
    finally:
        done.set()
        relay_thread.join(timeout=5)
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = json.loads(Path(d, STATE_FILE).read_text())
    history = state["history"]
    stage.update(len(history), len(history))
    return {
        "pairs": num_pairs,
        "pairs_from_iterations": training_iterations(ctx.k, ctx.iteration.mix_previous),
        "steps": len(history),
        "resumed_at_steps": state["resumed_at"],
        "history": history,
        "final": history[-1] if history else {},
    }
