"""Train stage, on the workers: Ray Train workers run FSDP2 SPIN updates on the iteration's pairs.

Each worker loads the starting model, shards it with FSDP2 `fully_shard` (per decoder layer, then the
root), streams its share of the pairs from `get_dataset_shard`, and minimises the SPIN loss against the
stored reference log-probs. Metrics are reduced over all ranks. Every `checkpoint_every_steps` steps the
sharded model and optimizer go to a resumable checkpoint (torch.distributed.checkpoint); a restarted
worker group (FailureConfig) resumes from it and skips the micro-batches already consumed.

With validation pairs, the policy is evaluated at step 0, every `eval.every_steps` and at the end; the best
evaluation's weights are kept, the guard may lower the lr or end the iteration, and the best (not the
last) model is what gets published as a Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from cluster.files import local_copy
from jobs.config import EvalConfig, TrainConfig
from jobs.hf import load_causal_lm, save_hf_checkpoint
from jobs.iteration.train_eval import ValidationEvaluator
from jobs.iteration.train_step import make_optimizer, pair_batch, spin_forward
from jobs.spin.guard import GainGuard
from jobs.spin.metrics import metrics_from_sums
from jobs.spin.schedule import StepPlan, lr_multiplier, warmup_steps
from jobs.storage import RunStorage

STATE_FILE = "trainer_state.json"  # inside each Ray Train checkpoint, beside the sharded weights


class TrainSpec(BaseModel):
    """Everything a worker needs, sent as train_loop_config: one frozen bundle across the actor boundary."""

    model_config = ConfigDict(frozen=True)

    model_uri: str  # the starting policy, which is also the reference
    storage_uri: str
    iteration: int
    train: TrainConfig  # the iteration's, overrides applied
    eval: EvalConfig
    save_dtype: str
    num_pairs: int
    pad_id: int
    validation: bool  # whether the worker group has validation pairs to evaluate and choose on
    # Report every step's metrics to Ray Train (for a tracker's controller callback), not only checkpointed ones.
    report_every_step: bool = False


@dataclass
class TrainerState:
    """What a worker group carries from step to step, and from a checkpoint into a restarted group."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best evaluation so far, with where its weights wait
    lr_scale: float = 1.0  # lowered by the guard
    stopped_early_at: int | None = None
    guard: GainGuard = field(default_factory=GainGuard)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        return cls(**(data | {"guard": GainGuard(**data["guard"])}))


@dataclass
class Worker:
    """One Train worker's model, optimizer and plan for the iteration."""

    spec: TrainSpec
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    plan: StepPlan
    state: TrainerState
    source_dir: str
    device: torch.device
    rank: int
    evaluator: ValidationEvaluator | None
    progress: Any


def _tell(w: Worker, event: dict[str, Any]) -> None:
    """Rank 0 reports to the driver's train stage (see train.relayed)."""
    if w.rank == 0 and w.progress is not None:
        w.progress.put_nowait(event)


@contextlib.contextmanager
def _timed(w: Worker, part: str) -> Iterator[None]:
    """Report the block's seconds as spent on `part` (the driver adds them up)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _tell(w, {"part": part, "seconds": time.perf_counter() - started})


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


def _start(spec: TrainSpec, progress: Any) -> Worker:
    """Load and shard the starting model, and build the optimizer, the schedule and the held-out evaluator."""
    t, context = spec.train, ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(t.seed)
    source_dir = local_copy(spec.model_uri)
    model = load_causal_lm(source_dir, torch.float32, device)
    if t.activation_checkpointing:  # FSDP2 all-gathers a layer again for its recomputation in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _shard_model(model, device, context.get_world_size(), bf16=t.precision == "bf16")
    model.train()
    optimizer = make_optimizer(model.parameters(), t)
    plan = StepPlan(
        spec.num_pairs, context.get_world_size(), t.micro_batch_size, t.accumulation_steps, t.epochs, t.max_steps
    )
    state = TrainerState(guard=GainGuard(t.guard.action, t.guard.patience, t.guard.threshold, t.guard.lr_factor))
    evaluator = None
    if spec.validation:
        shard = ray.train.get_dataset_shard("validation")
        rows = pa.concat_tables(list(shard.iter_batches(batch_size=None, batch_format="pyarrow")))
        evaluator = ValidationEvaluator(rows, t, spec.eval, source_dir, spec.pad_id, device)
    rank = context.get_world_rank()
    w = Worker(spec, model, optimizer, None, plan, state, source_dir, device, rank, evaluator, progress)
    base = lr_multiplier(plan.total_steps, warmup_steps(plan.total_steps, t.warmup_ratio), t.lr_scheduler)
    # The guard lowers the lr through the worker's current state, which a resume replaces.
    w.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: base(s) * w.state.lr_scale)
    return w


def _save_checkpoint(w: Worker, metrics: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
    with _timed(w, "checkpoints"), tempfile.TemporaryDirectory() as tmp:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if w.rank == 0:
            state = w.state.to_json() | {"scheduler": w.scheduler.state_dict()}
            Path(tmp, STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _resume(w: Worker) -> None:
    """A restarted worker group carries on after the last checkpointed step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return
    model_sd, optim_sd = get_state_dict(w.model, w.optimizer)
    with checkpoint.as_directory() as d:
        state_dict = {"model": model_sd, "optim": optim_sd}
        dcp.load(state_dict, checkpoint_id=d)
        saved = json.loads(Path(d, STATE_FILE).read_text())
    set_state_dict(w.model, w.optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])
    w.scheduler.load_state_dict(saved.pop("scheduler"))
    w.state = TrainerState.from_json(saved)
    w.state.resumed_at.append(w.state.step)


def _export(w: Worker, path: str, meta: dict[str, Any]) -> None:
    """Gather the full weights (a collective) and let rank 0 commit them as a Hugging Face checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    with _timed(w, "exports"):
        full = get_model_state_dict(w.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if w.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_hf_checkpoint(full, w.source_dir, tmp, w.spec.save_dtype)
                RunStorage(w.spec.storage_uri).upload_dir(tmp, path, meta)
        dist.barrier()


def _evaluate(w: Worker) -> bool:
    """Evaluate at the current step, keep the weights if they are the best so far, and consult the guard;
    returns whether this evaluation is the new best."""
    assert w.evaluator is not None
    spec, state = w.spec, w.state
    with _timed(w, "evaluations"):
        metrics = w.evaluator(w.model)
    state.evals.append({"step": state.step, **metrics})
    score = metrics["task_metric"] if spec.eval.task != "none" else -metrics["nll/real"]
    improved = state.best is None or score > state.best["score"]
    if improved:
        path = None
        if state.step > 0 and spec.eval.select_best:  # step 0's weights are the starting model, already stored
            path = RunStorage(spec.storage_uri).best(spec.iteration, state.step)
            _export(w, path, {"step": state.step, "score": score})
        state.best = {"step": state.step, "score": score, "path": path, **metrics}
    if state.step > 0:
        action = state.guard.observe(state.step, metrics["gain/real"])
        if action == "lower_lr":
            state.lr_scale *= spec.train.guard.lr_factor
        elif action == "stop":
            state.stopped_early_at = state.step
    return improved


def _optimizer_step(w: Worker, epoch: int, sums: torch.Tensor, tokens: int, seconds: float) -> dict[str, Any]:
    """Clip, step and schedule; then the step's metrics, reduced over every rank."""
    t = w.spec.train
    grad_norm = torch.nn.utils.clip_grad_norm_(w.model.parameters(), t.max_grad_norm) if t.max_grad_norm else None
    lr = w.scheduler.get_last_lr()[0]
    w.optimizer.step()
    w.scheduler.step()
    w.optimizer.zero_grad(set_to_none=True)
    reduced = torch.cat([sums.flatten(), torch.tensor([float(tokens)], dtype=torch.float64, device=sums.device)])
    dist.all_reduce(reduced)
    every, fresh, carried = reduced[:-1].view(sums.shape)
    w.state.step += 1
    metrics = {
        "step": w.state.step,
        "epoch": epoch,
        "learning_rate": lr,
        **metrics_from_sums(every),
        # The pairs of this iteration and those carried from the last one, apart: the carried ones are off-policy.
        "fresh": metrics_from_sums(fresh) if fresh[-1] > 0 else None,
        "carried": metrics_from_sums(carried) if carried[-1] > 0 else None,
        "tokens_per_s": float(reduced[-1]) / seconds,
        "tokens": int(reduced[-1]),
        "grad_norm": None if grad_norm is None else float(_full(grad_norm)),
    }
    w.state.history.append(metrics)
    _tell(w, {"total_steps": w.plan.total_steps, **metrics})
    if len(w.state.history) == 1:  # a group resumed from a checkpoint has steps behind it: no first step here
        _tell(w, {"reached": "first_step", "at": time.time()})
    return metrics


def _full(value: Any) -> Any:
    return value.full_tensor() if hasattr(value, "full_tensor") else value  # a DTensor under FSDP


def _after_step(w: Worker, metrics: dict[str, Any]) -> None:
    """Evaluate when due; checkpoint a new best or a guard decision at once, so a restart agrees with it."""
    state, spec = w.state, w.spec
    last = state.step == w.plan.total_steps
    due = bool(spec.eval.every_steps and state.step % spec.eval.every_steps == 0) or last
    improved = _evaluate(w) if w.evaluator and due else False
    metrics = _with_eval(metrics, state)
    if improved or last or state.stopped_early_at is not None or state.step % spec.train.checkpoint_every_steps == 0:
        _save_checkpoint(w, metrics)
    elif spec.report_every_step:
        ray.train.report(metrics)


def _with_eval(metrics: dict[str, Any], state: TrainerState) -> dict[str, Any]:
    """A step's metrics and, when the policy was evaluated at that step, its held-out ones under TRL's eval_ names."""
    if not state.evals or state.evals[-1]["step"] != state.step:
        return metrics
    return metrics | {f"eval_{key}": value for key, value in state.evals[-1].items() if key != "step"}


def _run_epoch(w: Worker, epoch: int) -> None:
    t = w.spec.train
    shard = ray.train.get_dataset_shard("train")
    sums, tokens, started = None, 0, time.perf_counter()
    batches = shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow", prefetch_batches=1)
    for i, records in enumerate(batches):
        if w.state.stopped_early_at is not None or w.state.step == w.plan.total_steps:
            break
        if w.plan.step_of(epoch, i) < w.state.step:
            continue  # consumed before a restart
        batch = pair_batch(records, w.spec.pad_id, w.device, mask_after_divergence=t.mask_after_divergence)
        carried = torch.tensor(records.column("iteration").to_pylist()) < w.spec.iteration
        loss, batch_sums = spin_forward(w.model, batch, t, 1.0 / w.plan.pairs_in_step(i), carried)
        loss.backward()
        sums = batch_sums if sums is None else sums + batch_sums
        tokens += int(batch.attention_mask.sum())
        if w.plan.ends_step(i):
            _after_step(w, _optimizer_step(w, epoch, sums, tokens, time.perf_counter() - started))
            sums, tokens, started = None, 0, time.perf_counter()


def _publish(w: Worker) -> None:
    """The best evaluated weights (or the last, without evaluation) become the iteration's model."""
    spec, state = w.spec, w.state
    storage = RunStorage(spec.storage_uri)
    output = storage.model(spec.iteration)
    meta = {"iteration": spec.iteration, "pairs": spec.num_pairs, "step": state.step}
    best = state.best
    if not (spec.eval.select_best and best is not None) or best["step"] == state.step:
        _export(w, output, meta)
        return
    if w.rank == 0:
        source = storage.local_path(best["path"]) if best["path"] else w.source_dir
        storage.upload_dir(source, output, meta | {"step": best["step"], "selected": "best"})
    dist.barrier()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    started = time.perf_counter()
    w = _start(TrainSpec.model_validate(config["spec"]), config.get("progress"))
    _tell(w, {"part": "load", "seconds": time.perf_counter() - started})  # loaded, sharded, validation pairs read
    _tell(w, {"reached": "workers_ready", "at": time.time()})
    _resume(w)
    if w.evaluator and not w.state.evals:
        _evaluate(w)
        if w.spec.report_every_step:  # the starting model's held-out scores, at step 0
            ray.train.report(_with_eval({"step": 0}, w.state))
    for epoch in range(w.plan.epochs_to_run):
        if w.state.stopped_early_at is None and w.state.step < (epoch + 1) * w.plan.steps_per_epoch:
            _run_epoch(w, epoch)  # epochs finished before a restart, or after the guard stopped, are skipped
    if w.state.stopped_early_at is None and w.state.step != w.plan.total_steps:
        raise RuntimeError(f"rank {w.rank} ran {w.state.step} steps, expected {w.plan.total_steps}")
    _publish(w)
