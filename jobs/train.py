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


def _training_rows(batch: pa.Table, drop_identical: bool) -> pa.Table:
    keep = pc.equal(batch.column("split"), "train")
    if drop_identical:
        real, generated = batch.column("real_ids").to_pylist(), batch.column("generated_ids").to_pylist()
        keep = pc.and_(keep, pa.array([r != g for r, g in zip(real, generated, strict=True)], pa.bool_()))
    return batch.filter(keep)


def training_pairs(ctx: IterationContext) -> ray.data.Dataset:
    """Training pairs of this iteration and, when mixing, of the previous one, shuffled with a fixed seed."""
    paths = [ctx.storage.iteration_path(j, "pairs") for j in training_iterations(ctx.k, ctx.iteration.mix_previous)]
    ds = read_records(ctx.storage, paths).map_batches(
        _training_rows,
        fn_kwargs={"drop_identical": ctx.cfg.train.drop_identical_pairs},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=READ_CPUS,
    )
    return ds.random_shuffle(seed=ctx.cfg.train.seed + ctx.k).materialize()


def held_out_pairs(ctx: IterationContext) -> ray.data.Dataset:
    """This iteration's held-out pairs: prompts never trained on, answered by this iteration's model."""
    return read_records(ctx.storage, [ctx.path("pairs")]).filter(expr="split == 'held_out'").materialize()


def run_train(ctx: IterationContext, stage: Stage, pad_id: int) -> dict[str, Any]:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    t = ctx.cfg.train
    pairs = training_pairs(ctx)
    num_pairs = pairs.count()
    datasets = {"train": pairs}
    if ctx.cfg.data.held_out_prompts:
        datasets["held_out"] = held_out_pairs(ctx)
    job = TrainJob(
        model_uri=ctx.model_uri,
        storage_uri=ctx.storage.uri,
        output_path=ctx.path("model"),
        best_dir=ctx.path("train", "best"),
        save_dtype=ctx.cfg.model.dtype,
        train=t,
        eval=ctx.cfg.eval,
        iteration=ctx.iteration,
        num_pairs=num_pairs,
        pad_id=pad_id,
        held_out="held_out" in datasets,
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
        datasets=datasets,
        # Each worker streams its own share of the training pairs, but evaluates on every held-out pair.
        dataset_config=DataConfig(datasets_to_split=["train"]),
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
                reward_margin=event["rewards/margins"],
                gain_real=event["gain/real"],
                gain_generated=event["gain/generated"],
                tokens_per_s=event["tokens_per_s"],
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
        "stopped_early_at": state["stopped_early_at"],
        "guard_fired_at": state["guard"]["fired_at"],
        "evals": state["evals"],
        "selected": state["best"],
        "history": history,
        "final": history[-1] if history else {},
    }
