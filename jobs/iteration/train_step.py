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


def _lm_head_weight(model: Any, hidden: torch.Tensor, last_logits: torch.Tensor) -> torch.Tensor:
    """The LM head's weight, once the model's own logits at the last position show that its head is the plain
    linear map `hidden · Wᵀ` the chunked log-probs compute (no bias, scaling or soft-capping, `hidden` the
    state it is applied to); any other head is refused by name."""
    from torch.distributed.tensor import DTensor

    weight = model.get_output_embeddings().weight
    if isinstance(weight, DTensor):  # FSDP2 keeps the root's parameters gathered after forward unless told not to
        raise ValueError(
            "the LM head's weight is sharded after the forward pass; keep the root FSDP module's "
            "reshard_after_forward off, or set train.logprob_chunk_tokens: null"
        )
    ours = hidden[:, -1].to(last_logits.dtype) @ weight.to(last_logits.dtype).T
    if not torch.allclose(ours.float(), last_logits[:, -1].float(), rtol=1e-2, atol=1e-2):
        raise ValueError(
            f"{type(model).__name__}'s logits are not its last hidden state times its LM head's weight (a bias, a "
            "scale or soft-capping); set train.logprob_chunk_tokens: null to compute log-probs from its full logits"
        )
    result: torch.Tensor = weight
    return result


def summed_logps(
    model: Any,
    ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response tokens per row. With `chunk`, the model's forward stops at the
    last hidden states (the decoder's output, caught by a hook; logits for one position only) and the LM head
    runs `chunk` response tokens at a time, so the (rows, length, vocabulary) logits are never held; without it,
    from the full logits."""
    kwargs = {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "use_cache": False}
    if chunk is None:
        return sequence_logps(model(**kwargs).logits, ids, loss_mask)
    caught: list[torch.Tensor] = []
    hook = model.get_decoder().register_forward_hook(lambda _m, _a, out: caught.append(out.last_hidden_state))
    try:
        last_logits = model(**kwargs, logits_to_keep=1).logits
    finally:
        hook.remove()
    (hidden,) = caught
    return sequence_logps_from_hidden(hidden, _lm_head_weight(model, hidden, last_logits), ids, loss_mask, chunk)


def policy_logps(model: Any, batch: PairBatch, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each (prompt, response)'s response given its prompt, and its response tokens, each (B,):
    the SFT loss's forward pass, and how every evaluated model's likelihood of the real answers is measured."""
    ids, attention, positions, loss_mask = (
        t.to(device) for t in pad_sequences([p for p, _ in batch], [r for _, r in batch], pad_id)
    )
    return summed_logps(model, ids, attention, positions, loss_mask, chunk=None)  # no-grad or SFT: the full logits


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
