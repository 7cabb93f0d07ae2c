"""Training: the project's SPIN update (reference log-probs precomputed by the score stage) against TRL's
`DPOTrainer` with `loss_type="sigmoid"` and the previous model as `ref_model`, the way SPIN is run with TRL.

    python -m tests.bench.run training

Same model, pairs (in the same order: one epoch, no shuffle on our side, TRL's sampler on its side), batch
size, AdamW, learning rate, gradient clipping and β. Tokens/s counts every non-padding token of both
sequences of a pair over the summed optimizer-step times. Peak memory is the process's peak RSS above its
RSS after imports (CPU) or the peak CUDA allocation (GPU). MFU is model FLOPs per second (6·N per token plus
attention, forward and backward, the reference forward not counted) over the measured matmul peak.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from jobs.config import TrainConfig
from tests.bench.common import (
    Row,
    Size,
    bench_pairs,
    case_main,
    matmul_peak_flops,
    measured_rows,
    peak_rss_mb,
    prepare_model,
    rss_mb,
)

BETA, LR, MAX_GRAD_NORM = 0.1, 5e-7, 1.0  # the paper's β and lr (zephyr, iteration 0), HF's clipping default
# TRL's DPOTrainer's loss has no NLL term: the comparison is of the paper's loss.
TRAIN = TrainConfig(
    beta=BETA, loss_type="sigmoid", optimizer="adamw", learning_rate=LR, weight_decay=0.0, real_nll_weight=0.0
)
# Weights stay fp32 as both trainers keep master weights; on a GPU both compute under bf16 autocast.
WEIGHTS_DTYPE = "float32"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _memory(baseline_mb: float) -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb() - baseline_mb


def _model_flops_per_token(model: Any, tokens_per_row: float) -> float:
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * tokens_per_row


def _check_batch(size: Size) -> int:
    if size.train_pairs != size.train_batch * size.train_steps:
        raise ValueError("train_pairs must equal train_batch × train_steps: both trainers make one pass")
    return size.train_batch


def _train_config(extra: dict[str, Any]) -> TrainConfig:
    """The bench's TrainConfig with the memory switches a case sets (`logprob_chunk_tokens`,
    `activation_checkpointing`)."""
    keys = ("logprob_chunk_tokens", "activation_checkpointing")
    return TRAIN.model_copy(update={k: extra[k] for k in keys if k in extra})


def _spin_steps(
    model: Any, pairs: list[dict[str, Any]], pad: int, b: int, steps: int, train: TrainConfig, device: str
) -> tuple[int, float, list[float], float]:
    """The score stage's reference log-probs (untimed), then `steps` optimizer steps of `b` pairs each; returns
    (tokens, step seconds, losses, score seconds)."""
    import torch

    from jobs.iteration.train_step import make_optimizer, policy_logps, spin_forward
    from jobs.spin.collate import collate_pairs

    def batch(i: int, ref: tuple[list[float], list[float]] | None = None) -> Any:
        rows = pairs[i * b : (i + 1) * b]
        return collate_pairs(
            [r["prompt_ids"] for r in rows],
            [r["real_ids"] for r in rows],
            [r["generated_ids"] for r in rows],
            pad_id=pad,
            ref_logps_real=None if ref is None else ref[0][i * b : (i + 1) * b],
            ref_logps_generated=None if ref is None else ref[1][i * b : (i + 1) * b],
        ).to(device)

    real, generated, start = [], [], time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            r, g, _ = policy_logps(model, batch(i), train.logprob_chunk_tokens)
            real += r.float().tolist()
            generated += g.float().tolist()
    score_seconds = time.perf_counter() - start
    if train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = make_optimizer(model.parameters(), train)
    autocast = torch.autocast(device, torch.bfloat16, enabled=device == "cuda")
    tokens, seconds, losses = 0, 0.0, []
    for i in range(steps):
        start = time.perf_counter()
        pb = batch(i, (real, generated))
        with autocast:
            loss, _ = spin_forward(model, pb, train, loss_scale=1.0 / b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        tokens += int(pb.attention_mask.sum())
        losses.append(float(loss))
    return tokens, seconds, losses, score_seconds


def _pairs(size: Size, model_dir: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    if extra.get("pairs_path"):  # pairs an iteration generated (bench_e2e): the same work, done bare
        import pyarrow.parquet as pq

        return pq.read_table(extra["pairs_path"]).to_pylist()[: size.train_pairs]
    return bench_pairs(model_dir, size.train_pairs, size.seed)


def spin_update(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """The project's step (jobs/iteration/train_step.py) in one process: one forward over [real; generated], no
    reference model resident, the LM head in chunks (the config's default)."""
    from jobs.chat import pad_id
    from jobs.hf import load_causal_lm, load_tokenizer

    baseline = rss_mb()
    b, device = _check_batch(size), _device()
    model_dir = prepare_model(size.model)
    pairs = _pairs(size, model_dir, extra)
    pad = pad_id(load_tokenizer(model_dir))
    model = load_causal_lm(model_dir, WEIGHTS_DTYPE, device)
    tokens, seconds, losses, score_seconds = _spin_steps(
        model, pairs, pad, b, size.train_steps, _train_config(extra), device
    )
    return _training_result(model, tokens, seconds, size, losses, _memory(baseline)) | {"score_seconds": score_seconds}


def _fsdp2_rank(rank: int, init_file: str, size: Size, extra: dict[str, Any], out_dir: str) -> None:
    """One of 2 FSDP2 ranks on gloo (CPU) or NCCL (GPU), each stepping on its half of every batch."""
    import json
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from jobs.chat import pad_id
    from jobs.hf import load_causal_lm, load_tokenizer
    from jobs.iteration.train_loop import _shard_model

    device = _device()
    if device == "cuda":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads() // 2))
    baseline = rss_mb()
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    model_dir = prepare_model(size.model)
    b = _check_batch(size) // 2
    pairs = _pairs(size, model_dir, extra)
    mine = [p for i, p in enumerate(pairs) if (i // b) % 2 == rank]  # batch i's pairs split between the ranks
    model = load_causal_lm(model_dir, WEIGHTS_DTYPE, device)
    _shard_model(model, torch.device(device), world_size=2, bf16=device == "cuda")
    train = _train_config(extra)
    tokens, seconds, losses, _ = _spin_steps(
        model, mine, pad_id(load_tokenizer(model_dir)), b, size.train_steps, train, device
    )
    memory = _memory(baseline)
    Path(out_dir, f"{rank}.json").write_text(json.dumps({"tokens": tokens, "seconds": seconds, "memory": memory}))
    dist.barrier()
    dist.destroy_process_group()


def spin_update_fsdp2(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """The update as Ray Train runs it, without Ray: 2 processes, the model sharded by FSDP2 (`_shard_model`),
    the global batch split between them. Peak memory is each rank's own (RSS above its imports, or CUDA)."""
    import json
    from pathlib import Path

    import torch.multiprocessing as mp

    if _device() == "cuda":
        import torch

        if torch.cuda.device_count() < 2:
            return {"skipped": "one GPU: the 2-rank case needs two"}
    if _check_batch(size) % 2:
        raise ValueError(f"train_batch {size.train_batch} must be even: each of the 2 ranks takes half a batch")
    prepare_model(size.model)  # built once here, not by both ranks at the same time
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_fsdp2_rank, args=(f"{tmp}/init", size, extra, tmp), nprocs=2)
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(2)]
    seconds = max(r["seconds"] for r in ranks)  # the ranks step together
    return {
        "tokens": sum(r["tokens"] for r in ranks),
        "seconds": seconds,
        "tokens_per_s": sum(r["tokens"] for r in ranks) / seconds,
        "peak_memory_mb": max(r["memory"] for r in ranks),
        "rank_peak_memory_mb": [r["memory"] for r in ranks],
    }


def score_stage(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """The score stage's model work on fresh pairs (`ReferenceScorer.reference_logps`, micro-batch by
    micro-batch): both answers by the forward pass, or with `sample_logps` the real answers only, each generated
    one summed from the generator's token log-probs (placeholders here: their values cost nothing to sum)."""
    import pyarrow as pa

    from jobs.chat import pad_id
    from jobs.hf import load_tokenizer
    from jobs.iteration.score import ReferenceScorer, ScorerSpec

    model_dir = prepare_model(size.model)
    pairs = _pairs(size, model_dir, extra)
    columns = {k: [p[k] for p in pairs] for k in ("prompt_ids", "real_ids", "generated_ids")}
    rows = pa.table(columns | {"generated_token_logps": [[-1.0] * len(g) for g in columns["generated_ids"]]})
    spec = ScorerSpec(
        model_path=model_dir,
        dtype=WEIGHTS_DTYPE,
        pad_id=pad_id(load_tokenizer(model_dir)),
        micro_batch_size=size.train_batch,
        use_gpu=_device() == "cuda",
        logprob_chunk_tokens=TRAIN.logprob_chunk_tokens,
        sample_logps=bool(extra.get("sample_logps")),
    )
    scorer = ReferenceScorer(spec)
    scorer.reference_logps(rows.slice(0, size.train_batch))  # warm-up, untimed
    start = time.perf_counter()
    for i in range(0, rows.num_rows, size.train_batch):
        scorer.reference_logps(rows.slice(i, size.train_batch))
    seconds = time.perf_counter() - start
    return {"pairs": rows.num_rows, "seconds": seconds, "pairs_per_s": rows.num_rows / seconds}


def _training_result(
    model: Any, tokens: int, seconds: float, size: Size, losses: list[float], memory_mb: float
) -> dict[str, Any]:
    tokens_per_s = tokens / seconds
    flops_per_token = _model_flops_per_token(model, tokens / (2 * size.train_pairs))
    peak = matmul_peak_flops("bfloat16" if _device() == "cuda" else "float32")
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "peak_memory_mb": memory_mb,
        "losses": losses,
        "model_flops_per_s": flops_per_token * tokens_per_s,
        "matmul_peak_flops": peak,
        "mfu": flops_per_token * tokens_per_s / peak,
    }


def _trl_trainer(size: Size, model_dir: str, ref_dir: str, out_dir: str) -> Any:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from jobs.hf import load_causal_lm, load_tokenizer

    pairs = bench_pairs(model_dir, size.train_pairs, size.seed)
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    args = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=_check_batch(size),
        max_steps=size.train_steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=size.seed,
    )
    device = _device()
    model = load_causal_lm(model_dir, WEIGHTS_DTYPE, device)
    ref = load_causal_lm(ref_dir, WEIGHTS_DTYPE, device)
    return DPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=data, processing_class=load_tokenizer(model_dir)
    )


def trl_dpo(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer: a policy and a resident reference model, reference forward every step."""
    import torch
    from transformers import TrainerCallback

    baseline = rss_mb()
    model_dir = prepare_model(size.model)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self._start = 0.0, 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - self._start

    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_trainer(size, model_dir, model_dir, out)
        timer = StepTimes()
        trainer.add_callback(timer)
        trainer.train()
    data = trainer.train_dataset
    tokens = sum(
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(*(data[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")), strict=True)
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return _training_result(trainer.model, tokens, timer.seconds, size, losses, _memory(baseline))


# Our loss type → (TRL's loss_type, our length_normalize): TRL's "ipo" divides each log-ratio by its length.
TRL_LOSSES = {
    "sigmoid": ("sigmoid", False),
    "hinge": ("hinge", False),
    "ipo": ("ipo", True),
    "sppo_hard": ("sppo_hard", False),
    "bco_pair": ("bco_pair", False),
}


def losses_on_first_batch(size: Size, loss_types: list[str]) -> dict[str, dict[str, Any]]:
    """TRL's and our loss on the same first batch, for each loss type, with a reference that differs from the
    policy (so the value is not the trivial one): the policy's weights plus seeded noise."""
    import torch

    from jobs.chat import pad_id
    from jobs.hf import load_causal_lm, load_tokenizer
    from jobs.iteration.train_step import policy_logps, spin_forward
    from jobs.spin.collate import collate_pairs

    model_dir = prepare_model(size.model)
    b = _check_batch(size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_causal_lm(model_dir, "float32")
        generator = torch.Generator().manual_seed(size.seed)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.05 * p.abs().mean())
        ref.save_pretrained(tmp)
        load_tokenizer(model_dir).save_pretrained(tmp)
        trainer = _trl_trainer(size, model_dir, tmp, tmp + "/out")
        examples = [trainer.train_dataset[i] for i in range(b)]
        inputs = trainer._prepare_inputs(trainer.data_collator(examples))
        pairs = bench_pairs(model_dir, size.train_pairs, size.seed)[:b]  # the rows TRL was given
        columns = [[p[k] for p in pairs] for k in ("prompt_ids", "real_ids", "generated_ids")]
        pad = pad_id(load_tokenizer(model_dir))
        policy = load_causal_lm(model_dir, "float32")
        with torch.no_grad():
            ref_real, ref_generated, _ = policy_logps(  # as the score stage computes them
                load_causal_lm(tmp, "float32"), collate_pairs(*columns, pad_id=pad), TRAIN.logprob_chunk_tokens
            )
            pb = collate_pairs(*columns, pad_id=pad, ref_logps_real=ref_real, ref_logps_generated=ref_generated)
            for loss_type in loss_types:
                trl_type, normalize = TRL_LOSSES[loss_type]
                trainer.loss_types, trainer.loss_weights = [trl_type], [1.0]
                trl_loss = float(trainer.compute_loss(trainer.model, inputs))
                ours_cfg = TRAIN.model_copy(
                    update={"loss_type": loss_type, "length_normalize": normalize, "real_nll_weight": 0.0}
                )
                ours, _ = spin_forward(policy, pb, ours_cfg, loss_scale=1.0 / b)
                out[loss_type] = {
                    "trl_loss": trl_loss,
                    "spin_loss": float(ours),
                    "abs_diff": abs(trl_loss - float(ours)),
                }
    same_tokens = [e["prompt_ids"] + e["chosen_ids"] + e["rejected_ids"] for e in examples] == [
        p["prompt_ids"] + p["real_ids"] + p["generated_ids"] for p in pairs
    ]
    return {loss_type: values | {"same_tokens": same_tokens} for loss_type, values in out.items()}


def same_loss(size: Size, extra: dict[str, Any]) -> dict[str, Any]:
    """Both losses on the same first batch (the paper's sigmoid loss)."""
    return losses_on_first_batch(size, ["sigmoid"])["sigmoid"]


CASES = {
    "spin_update": spin_update,
    # The same step before the chunked LM head: the model's full (rows, length, vocabulary) logits.
    "spin_update_full_logits": lambda size, extra: spin_update(size, extra | {"logprob_chunk_tokens": None}),
    "spin_update_checkpointed": lambda size, extra: spin_update(size, extra | {"activation_checkpointing": True}),
    "spin_update_fsdp2": spin_update_fsdp2,
    "trl_dpo": trl_dpo,
    "same_loss": same_loss,
    "score_forward": score_stage,
    "score_sample_logps": lambda size, extra: score_stage(size, extra | {"sample_logps": True}),
}


def rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    # Targets: keep the measured 1.75x TRL's speed; memory at most 0.6x TRL's in one process and 0.4x per rank
    # with 2 FSDP2 ranks.
    out = measured_rows(
        "training",
        results,
        "tokens_per_s",
        "tokens/s",
        "tok/s",
        [
            ("spin_update", "trl_dpo", {"at_least": 1.75}),
            ("spin_update_full_logits", "trl_dpo", {}),
            ("spin_update_checkpointed", "trl_dpo", {}),
            ("spin_update_fsdp2", "trl_dpo", {}),
        ],
    )
    out += measured_rows(
        "training",
        results,
        "peak_memory_mb",
        "peak memory",
        "MiB",
        [
            ("spin_update", "trl_dpo", {"at_most": 0.6}),
            ("spin_update_full_logits", "trl_dpo", {}),
            ("spin_update_checkpointed", "trl_dpo", {"at_most": 0.6}),
            ("spin_update_fsdp2", "trl_dpo", {"at_most": 0.4}),
            ("spin_update_fsdp2", "spin_update", {}),  # the sharding ratio: per rank over one process
        ],
    )
    out += measured_rows(
        "training",
        results,
        "pairs_per_s",
        "score stage, fresh pairs",
        "pairs/s",
        [("score_sample_logps", "score_forward", {"at_least": 1.8})],
    )
    check = results.get("same_loss", {})
    if "abs_diff" in check:
        met = check["abs_diff"] < 1e-4 and check["same_tokens"]
        out.append(
            Row(
                "training",
                "same_loss",
                "loss diff vs TRL, 1st batch",
                check["abs_diff"],
                "",
                None,
                None,
                "< 1e-4",
                met,
            )
        )
    for case in ("spin_update", "trl_dpo"):
        if "mfu" in results.get(case, {}):
            out.append(Row("utilisation", case, "MFU", 100 * results[case]["mfu"], "%"))
    if "matmul_peak_flops" in results.get("spin_update", {}):
        out.append(Row("utilisation", "matmul peak", "measured", results["spin_update"]["matmul_peak_flops"], "FLOP/s"))
    return out


if __name__ == "__main__":
    case_main(CASES)
