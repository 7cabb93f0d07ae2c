"""Evaluation inside training, on the validation split only (the test split never reaches training): SPIN's
diagnostics of the policy against the iteration's reference on the validation pairs, and its greedy answers for
the task metric. Runs on every Train worker, under FSDP. What it measures chooses the published checkpoint and
drives the guard.

The validation loss and margins are the plain SPIN loss's (`spin_loss`), whatever safeguards the training
objective adds, so evaluations stay comparable across settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import torch
import torch.distributed as dist

from jobs.config import EvalConfig, TrainConfig
from jobs.hf import load_tokenizer
from jobs.iteration.train_step import pair_batch, policy_logps
from jobs.spin.collate import PairBatch
from jobs.spin.loss import spin_loss
from jobs.spin.metrics import answer_match, metrics_from_sums, pair_metric_sums, response_nll


@torch.no_grad()
def validation_diagnostics(model: Any, batches: Sequence[PairBatch], train: TrainConfig) -> dict[str, float]:
    """SPIN metrics of `model` on pairs whose reference log-probs are stored, plus the real responses' per-token
    NLL (`nll/real`)."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    logps_real, tokens_real = [], []
    for batch in batches:
        assert batch.ref_logps_real is not None and batch.ref_logps_generated is not None
        real, generated, tokens = policy_logps(model, batch, train.logprob_chunk_tokens)
        out = spin_loss(
            real, generated, batch.ref_logps_real, batch.ref_logps_generated, beta=train.beta, loss_type=train.loss_type
        )
        batch_sums = pair_metric_sums(out, real, generated, train.beta)
        sums = batch_sums if sums is None else sums + batch_sums
        logps_real.append(real)
        tokens_real.append(tokens[: batch.num_pairs])
    model.train(was_training)
    if sums is None:
        raise ValueError("no validation pairs to evaluate on")
    return metrics_from_sums(sums) | {"nll/real": float(response_nll(torch.cat(logps_real), torch.cat(tokens_real)))}


@torch.no_grad()
def greedy_tokens(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int, eos_id: int, batch_size: int = 64
) -> list[list[int]]:
    """Greedy continuations of `prompts`, each cut after its first EOS.

    Every batch runs exactly `max_new_tokens` decoding steps whatever the model emits, so FSDP ranks given
    the same prompts stay in lockstep through their collective forward passes.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):  # left padding: every row's next token goes at the same column
            ids[i, width - len(p) :] = torch.tensor(list(p), device=device)
            mask[i, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        steps = [result.logits[:, -1].argmax(-1)]
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            result = model(
                input_ids=steps[-1][:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=result.past_key_values,
                use_cache=True,
            )
            steps.append(result.logits[:, -1].argmax(-1))
        for row in torch.stack(steps, dim=1).tolist():
            out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    model.train(was_training)
    return out


def task_metric(answers: Sequence[str], reals: Sequence[str], pattern: str) -> dict[str, float]:
    """Exact match of the final answers and how many prompts it was measured on; a pattern that finds no answer
    in any real answer is an error, never a score."""
    score, counted = answer_match(list(answers), list(reals), pattern)
    if counted == 0:
        raise ValueError(no_answer_found(pattern, reals))
    return {"task_metric": score, "task_prompts": counted}


def no_answer_found(pattern: str, reals: Sequence[str]) -> str:
    sample = reals[0][:200] if reals else "(no answers at all)"
    return (
        f"eval.answer_pattern {pattern!r} finds no answer in any of the {len(reals)} real answers, so the task metric "
        f"cannot be computed; a real answer reads: {sample!r}"
    )


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Keep an FSDP2 model's parameters gathered from its first forward pass to the end of the block.

    FSDP2 all-gathers a layer's parameters before each forward pass and frees them after. Evaluation makes
    hundreds of forward passes (a greedy answer is one per token) and no backward, so gathering once saves as
    many all-gathers: with 2 workers on 2 CPU cores, 300 greedy answers of SmolLM2 took over 20 minutes. It costs
    one unsharded copy of the weights per rank for the block's duration."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                # As fully_shard set them: layers free their parameters after forward, the root keeps its own.
                module.set_reshard_after_forward(module is not model, recurse=False)
                module.reshard()


class ValidationEvaluator:
    """The validation pairs, loaded once; every rank evaluates all of them so FSDP's collectives line up."""

    def __init__(
        self, rows: pa.Table, train: TrainConfig, evaluation: EvalConfig, source_dir: str, pad_id: int, device: Any
    ):
        self.train, self.evaluation = train, evaluation
        self.tokenizer, self.pad_id = load_tokenizer(source_dir), pad_id
        step = train.micro_batch_size
        self.batches = [
            pair_batch(rows.slice(i, step), pad_id, device, mask_after_divergence=train.mask_after_divergence)
            for i in range(0, rows.num_rows, step)
        ]
        n = min(evaluation.prompts_during_training, rows.num_rows)
        self.prompts = rows.column("prompt_ids").to_pylist()[:n]
        self.reals = rows.column("real").to_pylist()[:n]

    def __call__(self, model: Any) -> dict[str, float]:
        with gathered(model):
            metrics = validation_diagnostics(model, self.batches, self.train)
            if self.evaluation.task != "none":
                eos = self.tokenizer.eos_token_id
                answers = greedy_tokens(model, self.prompts, self.evaluation.max_new_tokens, self.pad_id, eos)
                texts = [self.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
                metrics |= task_metric(texts, self.reals, self.evaluation.answer_pattern)
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)  # every rank acts on the same numbers
        return dict(shared[0])
