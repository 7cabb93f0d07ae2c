"""The SPIN update as plain PyTorch: runs in one process, on a CPU, with or without FSDP around it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from jobs.spin import PairBatch, pair_metric_sums, sequence_logps, spin_objective
from jobs.spin.loss import LossType


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
    model: Any,
    batch: PairBatch,
    *,
    beta: float,
    loss_type: LossType,
    loss_scale: float,
    real_nll_weight: float = 0.0,
    length_normalize: bool = False,
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
        beta=beta,
        loss_type=loss_type,
        length_normalize=length_normalize,
        real_nll_weight=real_nll_weight,
    )
    return out.losses.sum() * loss_scale, pair_metric_sums(out, real, generated, beta)


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "rmsprop":
        # HF's `optim: rmsprop` (the paper's choice) is torch's RMSprop with its defaults.
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be rmsprop or adamw; got {name!r}")
