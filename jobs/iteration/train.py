"""Train stage, driver side: build the pair datasets and run the Ray Train `TorchTrainer` whose workers run
train_loop.py, relaying their per-step metrics to the stage's progress."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from jobs.iteration.context import IterationContext
from jobs.iteration.data import READ_CPUS, read_pairs
from jobs.iteration.train_loop import STATE_FILE, TrainSpec, train_loop_per_worker
from jobs.metrics import TrainSummary
from jobs.progress import Stage
from jobs.spin.names import METRIC_NAMES
from jobs.spin.pairs import training_iterations

RELAYED = (*METRIC_NAMES, "tokens_per_s", "tokens")  # a step's metrics that reach the progress sinks, names unchanged


def _without_identical(batch: pa.Table) -> pa.Table:
    real, generated = batch.column("real_ids").to_pylist(), batch.column("generated_ids").to_pylist()
    return batch.filter(pa.array([r != g for r, g in zip(real, generated, strict=True)], pa.bool_()))


def training_pairs(ctx: IterationContext) -> ray.data.Dataset:
    """Training pairs of this iteration and, when mixing, of the previous one, shuffled with a fixed seed."""
    ds = read_pairs(ctx.storage, [ctx.k], "train")
    if ctx.iteration.mix_previous and ctx.k > 0:  # the previous iteration's pairs, rescored by this iteration's model
        ds = ds.union(read_pairs(ctx.storage, [ctx.k], "train", folder="carried"))
    if ctx.train.drop_identical_pairs:
        ds = ds.map_batches(_without_identical, batch_format="pyarrow", batch_size=None, num_cpus=READ_CPUS)
    return ds.random_shuffle(seed=ctx.train.seed + ctx.k).materialize()


def step_progress(event: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """A worker's step event as (steps done, steps in all, the metrics a progress sink shows)."""
    return event["step"], event["total_steps"], {key: event[key] for key in RELAYED if key in event}


@contextlib.contextmanager
def relayed(stage: Stage) -> Iterator[Any]:
    """A Ray queue the rank-0 worker puts its step events on, forwarded to `stage` while the block runs."""
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node, as Ray Train places its controller: losing another node must not lose the queue.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    done = threading.Event()

    def relay() -> None:
        while True:
            try:
                event = events.get(timeout=0.5)
            except Empty:
                if done.is_set():  # only once the queue is empty: rank 0's last events come as the group ends
                    return
                continue
            if "part" in event:
                stage.part(event["part"], event["seconds"])
            elif "reached" in event:
                stage.reached(event["reached"], event["at"])
            else:
                step, total, info = step_progress(event)
                stage.update(step, total, **info)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield events
    finally:
        done.set()
        thread.join(timeout=5)


def _trainer(ctx: IterationContext, spec: TrainSpec, datasets: dict[str, ray.data.Dataset], events: Any) -> Any:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = ctx.train
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {}) | t.resources_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "progress": events},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            # Ray Train keeps its checkpoints in <storage_path>/<name>: the iteration's train/ folder.
            name=Path(ctx.storage.train(ctx.k)).name,
            storage_path=ctx.storage.uri_of(ctx.storage.iteration(ctx.k)),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[ctx.tracker.callback(ctx.k)] if ctx.tracker else [],
        ),
        datasets=datasets,
        # Each worker streams its own share of the training pairs, but evaluates on every validation pair.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def run_train(ctx: IterationContext, stage: Stage) -> TrainSummary:
    pairs = training_pairs(ctx)
    datasets = {"train": pairs}
    if ctx.cfg.data.validation_prompts:
        datasets["validation"] = read_pairs(ctx.storage, [ctx.k], "validation").materialize()
    spec = TrainSpec(
        model_uri=ctx.model_uri,
        storage_uri=ctx.storage.uri,
        iteration=ctx.k,
        train=ctx.train,
        eval=ctx.cfg.eval,
        save_dtype=ctx.cfg.model.dtype,
        num_pairs=pairs.count(),
        pad_id=ctx.pad_id,
        validation="validation" in datasets,
        report_every_step=ctx.tracker is not None,
    )
    stage.reached("datasets")  # the pairs read and counted, the validation pairs gathered
    with relayed(stage) as events:
        result = _trainer(ctx, spec, datasets, events).fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = json.loads(Path(d, STATE_FILE).read_text())
    history = state["history"]
    stage.update(len(history), len(history))
    return TrainSummary.model_validate(
        {
            "pairs": spec.num_pairs,
            "pairs_from_iterations": training_iterations(ctx.k, ctx.iteration.mix_previous),
            "steps": len(history),
            "resumed_at_steps": state["resumed_at"],
            "stopped_early_at": state["stopped_early_at"],
            "guard_fired_at": state["guard"]["fired_at"],
            "evals": state["evals"],
            "selected": state["best"],
            "history": history,
        }
    )
