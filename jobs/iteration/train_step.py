"""The SPIN update as plain PyTorch: runs in one process, on a CPU, with or without FSDP around it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import torch

from jobs.config import TrainConfig
from jobs.spin.collate import PairBatch, collate_pairs, pad_sequences
from jobs.spin.logprobs import sequence_logps, sequence_logps_from_hidden
from jobs.spin.loss import spin_objective
from jobs.spin.metrics import pair_metric_sums
from jobs.spin.pairs import scored_generated_length


def pair_batch(
    records: pa.Table,
    pad_id: int,
    device: torch.device,
    *,
    with_reference: bool = True,
    mask_after_divergence: bool = False,
) -> PairBatch:
    """Pair records (jobs/records.py) collated for one forward pass, on `device`. With `mask_after_divergence`
    a generated answer counts only up to its first token that differs from the real one (scoring and training
    must agree on it, so both read it from the iteration's train config)."""
    real, generated = records.column("real_ids").to_pylist(), records.column("generated_ids").to_pylist()
    scored = (
        [scored_generated_length(r, g) for r, g in zip(real, generated, strict=True)] if mask_after_divergence else None
    )
    reference = (
        {
            "ref_logps_real": records.column("ref_logp_real").to_pylist(),
            "ref_logps_generated": records.column("ref_logp_generated").to_pylist(),
        }
        if with_reference
        else {}
    )
    return collate_pairs(
        records.column("prompt_ids").to_pylist(), real, generated, pad_id=pad_id, scored_generated=scored, **reference
    ).to(device)


def _lm_head_weight(model: Any) -> torch.Tensor:
    """The weight of a plain linear LM head (no bias, no logit scaling or soft-capping), which the chunked
    log-probs assume; any other head is named in the error."""
    head, config = model.get_output_embeddings(), model.config
    altered = [a for a in ("final_logit_softcapping", "logit_scale") if getattr(config, a, None) not in (None, 1.0)]
    if getattr(head, "bias", None) is not None or altered:
        raise ValueError(
            f"{type(model).__name__}'s LM head is not a plain linear map (bias or {altered or 'bias'}); "
            "set train.logprob_chunk_tokens: null to compute log-probs from its full logits"
        )
    weight: torch.Tensor = head.weight
    return weight


def summed_logps(
    model: Any,
    ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response tokens per row. With `chunk`, the model's forward stops at the
    last hidden states (logits for one position only) and the LM head runs `chunk` response tokens at a time,
    so the (rows, length, vocabulary) logits are never held; without it, from the full logits."""
    kwargs = {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "use_cache": False}
    if chunk is None:
        return sequence_logps(model(**kwargs).logits, ids, loss_mask)
    hidden = model(**kwargs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    return sequence_logps_from_hidden(hidden, _lm_head_weight(model), ids, loss_mask, chunk)


def policy_logps(
    model: Any, batch: PairBatch, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the real and generated rows in one forward pass (`chunk`: as in
    `summed_logps`, the train config's `logprob_chunk_tokens`).

    Returns (log p(real) (B,), log p(generated) (B,), response tokens (2B,)).
    """
    logps, tokens = summed_logps(
        model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.loss_mask, chunk
    )
    b = batch.num_pairs
    return logps[:b], logps[b:], tokens


def response_logps(
    model: Any,
    batch: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each (prompt, response)'s response given its prompt, and its response tokens, each (B,):
    the SFT loss's forward pass, and how every evaluated model's likelihood of the real answers is measured."""
    ids, attention, positions, loss_mask = (
        t.to(device) for t in pad_sequences([p for p, _ in batch], [r for _, r in batch], pad_id)
    )
    return summed_logps(model, ids, attention, positions, loss_mask, chunk)


def spin_forward(
    model: Any, batch: PairBatch, train: TrainConfig, loss_scale: float, carried: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss to back-propagate (sum of per-pair losses × loss_scale) and the batch's metric sums: a (3, M + 1) tensor
    whose rows are all pairs, this iteration's (fresh) and the previous iteration's (`carried`, a (B,) mask)."""
    if batch.ref_logps_real is None or batch.ref_logps_generated is None:
        raise ValueError("the batch has no reference log-probs; run the score stage first")
    real, generated, tokens = policy_logps(model, batch, train.logprob_chunk_tokens)
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
        dpop_lambda=train.dpop_lambda,
        length_normalize=train.length_normalize,
        real_nll_weight=train.real_nll_weight,
    )
    old = torch.zeros(b, dtype=torch.bool, device=real.device) if carried is None else carried.to(real.device)
    sums = [pair_metric_sums(out, real, generated, train.beta, select) for select in (None, ~old, old)]
    return out.losses.sum() * loss_scale, torch.stack(sums)


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "rmsprop":
        # HF's `optim: rmsprop` (the paper's choice) is torch's RMSprop with its defaults.
        return torch.optim.RMSprop(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
