"""Train stage: Ray Train workers run FSDP2 SPIN updates on the iteration's pairs.

Each worker loads the starting model, shards it with FSDP2 `fully_shard` (per decoder layer, then the
root), streams its share of the pairs from `get_dataset_shard`, and minimises the SPIN loss against the
stored reference log-probs. Metrics are reduced over all ranks. Every `checkpoint_every_steps` steps the
sharded model and optimizer go to a resumable checkpoint (torch.distributed.checkpoint); a restarted
worker group (FailureConfig) resumes from it and skips the micro-batches already consumed.

With held-out pairs, the policy is evaluated at step 0, every `eval.every_steps` and at the end; the best
evaluation's weights are kept, the guard may lower the lr or end the iteration, and the best (not the
last) model is what gets published as a Hugging Face checkpoint.
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

from jobs.config import EvalConfig, ResolvedIteration, TrainConfig
from jobs.evaluate import greedy_tokens, held_out_diagnostics, task_metric
from jobs.spin import GainGuard, PairBatch, collate_pairs, metrics_from_sums
from jobs.spin.schedule import StepPlan, lr_multiplier
from jobs.storage import RunStorage, local_copy
from jobs.train_step import make_optimizer, spin_forward

STATE_FILE = "trainer_state.json"


class TrainJob(BaseModel):
    """Everything a worker needs, sent as train_loop_config."""

    model_config = ConfigDict(frozen=True)

    model_uri: str  # the starting policy, which is also the reference
    storage_uri: str
    output_path: str  # where the published Hugging Face checkpoint goes, in storage_uri's filesystem
    best_dir: str  # where the best evaluated weights wait, one folder per step (best/step_<n>)
    save_dtype: str
    train: TrainConfig
    eval: EvalConfig
    iteration: ResolvedIteration
    num_pairs: int
    pad_id: int
    held_out: bool


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


def _export(model: Any, job: TrainJob, source_dir: str, path: str, meta: dict[str, Any]) -> None:
    """Gather the full weights (a collective) and let rank 0 commit them as a Hugging Face checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from jobs.modeling import save_hf_checkpoint

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_hf_checkpoint(full, source_dir, tmp, job.save_dtype)
            RunStorage(job.storage_uri).upload_dir(tmp, path, meta)
    dist.barrier()


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)  # DTensor under FSDP


def _collate(batch: pa.Table, pad_id: int, device: torch.device) -> PairBatch:
    return collate_pairs(
        batch.column("prompt_ids").to_pylist(),
        batch.column("real_ids").to_pylist(),
        batch.column("generated_ids").to_pylist(),
        pad_id=pad_id,
        ref_logps_real=batch.column("ref_logp_real").to_pylist(),
        ref_logps_generated=batch.column("ref_logp_generated").to_pylist(),
    ).to(device)


class HeldOutEvaluator:
    """The held-out pairs, loaded once; every rank evaluates all of them so FSDP's collectives line up."""

    def __init__(self, job: TrainJob, source_dir: str, device: torch.device):
        from jobs.modeling import load_tokenizer

        rows = pa.concat_tables(
            list(ray.train.get_dataset_shard("held_out").iter_batches(batch_size=None, batch_format="pyarrow"))
        )
        self.job, self.tokenizer = job, load_tokenizer(source_dir)
        step = job.train.micro_batch_size
        self.batches = [_collate(rows.slice(i, step), job.pad_id, device) for i in range(0, rows.num_rows, step)]
        n = min(job.eval.prompts_during_training, rows.num_rows)
        self.prompts = rows.column("prompt_ids").to_pylist()[:n]
        self.reals = rows.column("real").to_pylist()[:n]

    def __call__(self, model: Any) -> dict[str, float]:
        job, it = self.job, self.job.iteration
        metrics = held_out_diagnostics(model, self.batches, beta=it.beta, loss_type=it.loss_type)
        if job.eval.task != "none":
            eos = self.tokenizer.eos_token_id
            answers = greedy_tokens(model, self.prompts, job.eval.max_new_tokens, job.pad_id, eos)
            texts = [self.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
            metrics |= task_metric(texts, self.reals, job.eval.answer_pattern)
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)  # every rank acts on the same numbers
        return dict(shared[0])


def _evaluate(
    evaluator: HeldOutEvaluator, model: Any, job: TrainJob, source_dir: str, state: dict[str, Any], guard: GainGuard
) -> None:
    """Evaluate at the current step, keep the weights if they are the best so far, and consult the guard."""
    step = state["step"]
    metrics = evaluator(model)
    state["evals"].append({"step": step, **metrics})
    score = metrics["task_metric"] if job.eval.task != "none" else -metrics["nll/real"]
    best = state["best"]
    if best is None or score > best["score"]:
        path = f"{job.best_dir}/step_{step}" if step > 0 and job.eval.select_best else None
        if path:  # step 0's weights are the starting model, already stored
            _export(model, job, source_dir, path, {"step": step, "score": score})
        state["best"] = {"step": step, "score": score, "path": path, **metrics}
    if step > 0:
        action = guard.observe(step, metrics["gain/real"])
        if action == "lower_lr":
            state["lr_scale"] *= job.train.guard.lr_factor
        elif action == "stop":
            state["stopped_early_at"] = step
        state["guard"] = {"negatives": guard.negatives, "fired_at": guard.fired_at}


def _publish(model: Any, job: TrainJob, source_dir: str, state: dict[str, Any]) -> None:
    """The best evaluated weights (or the last, without evaluation) become the iteration's model."""
    meta = {"iteration": job.iteration.index, "pairs": job.num_pairs, "step": state["step"]}
    best = state["best"]
    if not (job.eval.select_best and best is not None) or best["step"] == state["step"]:
        _export(model, job, source_dir, job.output_path, meta)
        return
    if ray.train.get_context().get_world_rank() == 0:
        storage = RunStorage(job.storage_uri)
        source = storage.local_path(best["path"]) if best["path"] else source_dir
        storage.upload_dir(source, job.output_path, meta | {"step": best["step"], "selected": "best"})
    dist.barrier()


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
    state: dict[str, Any] = {
        "step": 0,
        "history": [],
        "resumed_at": [],
        "evals": [],
        "best": None,
        "lr_scale": 1.0,
        "stopped_early_at": None,
        "guard": {"negatives": 0, "fired_at": []},
    }
    base = lr_multiplier(plan.total_steps, t.warmup_ratio, t.lr_scheduler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: base(s) * state["lr_scale"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group: carry on after the last checkpointed step
        state.update(_load_checkpoint(checkpoint, model, optimizer, scheduler))
        state["resumed_at"].append(state["step"])
    guard = GainGuard(
        t.guard.action,
        t.guard.patience,
        t.guard.threshold,
        t.guard.lr_factor,
        state["guard"]["negatives"],
        list(state["guard"]["fired_at"]),
    )
    evaluator = HeldOutEvaluator(job, source_dir, device) if job.held_out else None
    if evaluator and not state["evals"]:
        _evaluate(evaluator, model, job, source_dir, state, guard)

    shard = ray.train.get_dataset_shard("train")
    sums = torch.zeros(0)
    for epoch in range(it.epochs):
        if state["stopped_early_at"] is not None or state["step"] >= (epoch + 1) * plan.steps_per_epoch:
            continue  # finished before a restart, or stopped by the guard
        step_start, tokens = time.perf_counter(), 0
        batches = shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow", prefetch_batches=1)
        for i, raw in enumerate(batches):
            if state["stopped_early_at"] is not None:
                break
            if plan.step_of(epoch, i) < state["step"]:
                continue  # consumed before a restart
            batch = _collate(raw, job.pad_id, device)
            loss, batch_sums = spin_forward(
                model,
                batch,
                beta=it.beta,
                loss_type=it.loss_type,
                loss_scale=1.0 / plan.pairs_in_step(i),
                real_nll_weight=t.real_nll_weight,
                length_normalize=t.length_normalize,
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
            state["step"] += 1
            metrics = {
                "step": state["step"],
                "epoch": epoch,
                "learning_rate": lr,
                **metrics_from_sums(reduced[:-1]),
                "tokens_per_s": float(reduced[-1]) / (time.perf_counter() - step_start),
                "grad_norm": _scalar(grad_norm),
            }
            state["history"].append(metrics)
            if rank == 0 and progress is not None:
                progress.put_nowait({"total_steps": plan.total_steps, **metrics})
            last = state["step"] == plan.total_steps
            improved = False
            if evaluator and ((job.eval.every_steps and state["step"] % job.eval.every_steps == 0) or last):
                previous = state["best"]
                _evaluate(evaluator, model, job, source_dir, state, guard)
                improved = state["best"] is not previous
            # A new best, or a guard decision, is checkpointed at once so a restart agrees with it.
            if (
                improved
                or last
                or state["stopped_early_at"] is not None
                or state["step"] % t.checkpoint_every_steps == 0
            ):
                _save_checkpoint(model, optimizer, scheduler, state, metrics)
            sums, tokens, step_start = torch.zeros(0), 0, time.perf_counter()
    if state["stopped_early_at"] is None and state["step"] != plan.total_steps:
        raise RuntimeError(f"rank {rank} ran {state['step']} steps, expected {plan.total_steps}")
    _publish(model, job, source_dir, state)
