"""The SPIN update as plain PyTorch: runs in one process, on a CPU, with or without FSDP around it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import torch

from jobs.config import TrainConfig
from jobs.spin.collate import PairBatch, collate_pairs
from jobs.spin.logprobs import sequence_logps
from jobs.spin.loss import spin_objective
from jobs.spin.metrics import pair_metric_sums


def pair_batch(records: pa.Table, pad_id: int, device: torch.device, with_reference: bool = True) -> PairBatch:
    """Pair records (jobs/records.py) collated for one forward pass, on `device`."""
    reference = (
        {
            "ref_logps_real": records.column("ref_logp_real").to_pylist(),
            "ref_logps_generated": records.column("ref_logp_generated").to_pylist(),
        }
        if with_reference
        else {}
    )
    return collate_pairs(
        records.column("prompt_ids").to_pylist(),
        records.column("real_ids").to_pylist(),
        records.column("generated_ids").to_pylist(),
        pad_id=pad_id,
        **reference,
    ).to(device)


def policy_logps(model: Any, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the real and generated rows in one forward pass.

    Returns (log p(real) (B,), log p(generated) (B,), response tokens (2B,)).
    """
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    logps, tokens = sequence_logps(logits, batch.input_ids, batch.loss_mask)
    b = batch.num_pairs
    return logps[:b], logps[b:], tokens


def spin_forward(
    model: Any, batch: PairBatch, train: TrainConfig, loss_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss to back-propagate (sum of per-pair losses × loss_scale) and the batch's metric sums."""
    if batch.ref_logps_real is None or batch.ref_logps_generated is None:
        raise ValueError("the batch has no reference log-probs; run the score stage first")
    real, generated, tokens = policy_logps(model, batch)
    b = batch.num_pairs
    out = spin_objective(
        real,
        generated,
        batch.ref_logps_real,
        batch.ref_logps_generated,
        tokens[:b],
        tokens[b:],
        beta=train.beta,
        loss_type=train.loss_type,
        length_normalize=train.length_normalize,
        real_nll_weight=train.real_nll_weight,
    )
    return out.losses.sum() * loss_scale, pair_metric_sums(out, real, generated, train.beta)


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "rmsprop":
        # HF's `optim: rmsprop` (the paper's choice) is torch's RMSprop with its defaults.
        return torch.optim.RMSprop(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
