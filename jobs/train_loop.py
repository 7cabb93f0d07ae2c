"""Train stage: Ray Train workers run FSDP2 SPIN updates on the iteration's pairs.

Each worker loads the starting model, shards it with FSDP2 `fully_shard` (per decoder layer, then the
root), streams its share of the pairs from `get_dataset_shard`, and minimises the SPIN loss against the
stored reference log-probs. Metrics are reduced over all ranks. Every `checkpoint_every_steps` steps the
sharded model and optimizer go to a resumable checkpoint (torch.distributed.checkpoint); a restarted
worker group (FailureConfig) resumes from it and skips the micro-batches already consumed. At the end,
rank 0 gathers the full weights and publishes a Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from jobs.config import ResolvedIteration, TrainConfig
from jobs.spin import collate_pairs, metrics_from_sums
from jobs.spin.schedule import StepPlan, lr_multiplier
from jobs.storage import RunStorage, local_copy
from jobs.train_step import make_optimizer, spin_forward

STATE_FILE = "trainer_state.json"


class TrainJob(BaseModel):
    """Everything a worker needs, sent as train_loop_config."""

    model_config = ConfigDict(frozen=True)

    model_uri: str  # the starting policy, which is also the reference
    storage_uri: str
    output_path: str  # where the final Hugging Face checkpoint is committed, in storage_uri's filesystem
    save_dtype: str
    train: TrainConfig
    iteration: ResolvedIteration
    num_pairs: int
    pad_id: int


def _shard_model(model: torch.nn.Module, device: torch.device, world_size: int, bf16: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    # bf16 compute with fp32 gradient reduction and fp32 master weights, as in the paper's bf16 runs.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mesh": mesh} | ({"mp_policy": mp} if mp else {})
    for layer in model.model.layers:  # type: ignore[union-attr]
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def _save_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], metrics: dict[str, Any]
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with tempfile.TemporaryDirectory() as tmp:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if ray.train.get_context().get_world_rank() == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _load_checkpoint(checkpoint: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with checkpoint.as_directory() as d:
        state_dict = {"model": model_sd, "optim": optim_sd}
        dcp.load(state_dict, checkpoint_id=d)
        state = json.loads(Path(d, STATE_FILE).read_text())
    set_state_dict(model, optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])
    scheduler.load_state_dict(state.pop("scheduler"))
    return dict(state)


def _publish_model(model: Any, job: TrainJob, source_dir: str) -> None:
    """Gather the full weights (a collective) and let rank 0 commit the Hugging Face checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from jobs.modeling import save_hf_checkpoint

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ray.train.get_context().get_world_rank() == 0:
        storage = RunStorage(job.storage_uri)
        with tempfile.TemporaryDirectory() as tmp:
            save_hf_checkpoint(full, source_dir, tmp, job.save_dtype)
            storage.upload_dir(tmp, job.output_path, {"iteration": job.iteration.index, "pairs": job.num_pairs})
    dist.barrier()


def _collate(batch: pa.Table, pad_id: int, device: torch.device) -> Any:
    return collate_pairs(
        batch.column("prompt_ids").to_pylist(),
        batch.column("real_ids").to_pylist(),
        batch.column("generated_ids").to_pylist(),
        pad_id=pad_id,
        ref_logps_real=batch.column("ref_logp_real").to_pylist(),
        ref_logps_generated=batch.column("ref_logp_generated").to_pylist(),
    ).to(device)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job = TrainJob.model_validate(config["job"])
    progress = config.get("progress")
    t, it = job.train, job.iteration
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(t.seed)

    from jobs.modeling import load_causal_lm

    source_dir = local_copy(job.model_uri)
    model = load_causal_lm(source_dir, torch.float32, device)
    _shard_model(model, device, world, bf16=t.precision == "bf16")
    model.train()
    optimizer = make_optimizer(model.parameters(), t.optimizer, it.learning_rate, t.weight_decay)
    plan = StepPlan(job.num_pairs, world, t.micro_batch_size, t.accumulation_steps, it.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(plan.total_steps, t.warmup_ratio, t.lr_scheduler)
    )
    state: dict[str, Any] = {"step": 0, "history": [], "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group: carry on after the last checkpointed step
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler)
        state["resumed_at"].append(state["step"])

    shard = ray.train.get_dataset_shard("train")
    sums = torch.zeros(0)
    for epoch in range(it.epochs):
        if state["step"] >= (epoch + 1) * plan.steps_per_epoch:
            continue  # finished before a restart
        step_start, tokens = time.perf_counter(), 0
        batches = shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow", prefetch_batches=1)
        for i, raw in enumerate(batches):
            if plan.step_of(epoch, i) < state["step"]:
                continue  # consumed before a restart
            batch = _collate(raw, job.pad_id, device)
            loss, batch_sums = spin_forward(
                model, batch, beta=it.beta, loss_type=it.loss_type, loss_scale=1.0 / plan.pairs_in_step(i)
            )
            loss.backward()
            sums = batch_sums if not len(sums) else sums + batch_sums
            tokens += int(batch.attention_mask.sum())
            if not plan.ends_step(i):
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm) if t.max_grad_norm else None
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            reduced = torch.cat([sums, torch.tensor([float(tokens)], dtype=torch.float64, device=sums.device)])
            dist.all_reduce(reduced)
            elapsed = time.perf_counter() - step_start
            state["step"] += 1
            metrics = {
                "step": state["step"],
                "epoch": epoch,
                "learning_rate": lr,
                **metrics_from_sums(reduced[:-1]),
                "tokens_per_s": float(reduced[-1]) / elapsed,
                "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                if grad_norm is not None
                else None,
            }
            state["history"].append(metrics)
            if rank == 0 and progress is not None:
                progress.put_nowait({"step": state["step"], "total_steps": plan.total_steps, **metrics})
            if state["step"] % t.checkpoint_every_steps == 0 or state["step"] == plan.total_steps:
                _save_checkpoint(model, optimizer, scheduler, state, metrics)
            sums, tokens, step_start = torch.zeros(0), 0, time.perf_counter()
    if state["step"] != plan.total_steps:
        raise RuntimeError(f"rank {rank} ran {state['step']} steps, expected {plan.total_steps}")
    _publish_model(model, job, source_dir)
