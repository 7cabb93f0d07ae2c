"""Summed log-probabilities of the response tokens of a batch of sequences."""

from __future__ import annotations

from typing import Any

import torch


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token under the model.

    Args:
        logits: (B, T, V) logits, where position t predicts token t+1.
        input_ids: (B, T) token ids.

    Returns:
        (B, T-1) tensor whose [b, t] entry is log p(input_ids[b, t+1] | input_ids[b, :t+1]).

    Computed as logit[y] − logsumexp(logits) in float32 so the (B, T, V) log-softmax is never materialised.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the masked (response) tokens of each sequence.

        log p(y | x) = Σ_t  m_t · log p(s_t | s_<t)

    where s is the concatenated prompt x and response y, and m_t is 1 exactly on the tokens of y. Prompt and
    padding tokens carry m_t = 0, so they contribute nothing whatever their logits are.

    Args:
        logits: (B, T, V) model outputs for input_ids.
        input_ids: (B, T) token ids (prompt + response + padding, either side).
        loss_mask: (B, T) bool, True on response tokens.

    Returns:
        (sum of log-probs (B,), number of response tokens (B,)).
    """
    mask = loss_mask[:, 1:].to(torch.float32)
    return (token_logps(logits, input_ids) * mask).sum(-1), mask.sum(-1)


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(target) = h·w_y − logsumexp(h·Wᵀ) for each row of `hidden`, the LM head applied one block of rows
    (`blocks`: (start, end) pairs covering the rows) at a time.

    Only `hidden`, the head's weight and the targets are kept for backward; the backward pass recomputes each
    block's logits. Peak memory is one (block, V) array instead of the (N, V) logits, their softmax and their
    gradient, at the price of a second LM-head matmul per block.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, blocks: list[tuple[int, int]]
    ) -> torch.Tensor:
        device = hidden.device.type
        # The head runs in the dtype autocast would give it; the backward pass (which autocast does not cover)
        # recomputes in the same one.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        exact = torch.promote_types(dtype, torch.float32)  # softmax and sums never below fp32
        out = torch.empty(hidden.shape[0], dtype=exact, device=hidden.device)
        w = weight.to(dtype)
        with torch.autocast(device, enabled=False):
            for start, end in blocks:
                logits = (hidden[start:end].to(dtype) @ w.T).to(exact)
                picked = logits.gather(-1, targets[start:end].unsqueeze(-1)).squeeze(-1)
                out[start:end] = picked - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.blocks, ctx.dtype = blocks, dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        hidden, weight, targets = ctx.saved_tensors
        blocks, dtype = ctx.blocks, ctx.dtype
        exact = torch.promote_types(dtype, torch.float32)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if want_weight else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start, end in blocks:
                h = hidden[start:end].to(dtype)
                g = grad_out[start:end].to(exact).unsqueeze(-1)
                # d(logit_y − logsumexp)/d logits = onehot(y) − softmax(logits)
                grad_logits = torch.softmax((h @ w.T).to(exact), dim=-1).mul_(-g)
                grad_logits.scatter_add_(-1, targets[start:end].unsqueeze(-1), g)
                grad_logits = grad_logits.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:  # the matmul in the compute dtype, the sum over chunks in fp32 or wider
                    grad_weight += (grad_logits.T @ h).to(exact)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def sequence_logps_from_hidden(
    hidden: torch.Tensor, head_weight: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` from the last hidden states and the LM head's weight (a linear head without bias), never
    holding more than `chunk` tokens' logits: only the response tokens' positions go through the head.

    Each sequence's tokens go through the head in blocks of their own (`chunk` at most), never mixed with another
    sequence's, so the head adds no rounding that depends on the rest of the batch (a matmul's can depend on the
    rows beside it). The decoder's matmuls still can, so the score stage's reference and the trainer's first policy
    agree to float rounding (about 1e-7 relative in fp32), not always bit for bit.

    Args:
        hidden: (B, T, H) final hidden states (after the last norm), where position t predicts token t+1.
        head_weight: (V, H) the LM head's weight.
        input_ids, loss_mask: as for `sequence_logps`.
        chunk: tokens per LM-head block.

    Returns:
        (sum of log-probs (B,), number of response tokens (B,)), equal to `sequence_logps` on the head's logits.
    """
    mask = loss_mask[:, 1:].bool()
    counts = mask.sum(-1)
    blocks, start = [], 0
    for n in counts.tolist():
        blocks += [(s, min(s + chunk, start + n)) for s in range(start, start + n, chunk)]
        start += n
    token: torch.Tensor = _ChunkedTokenLogps.apply(  # type: ignore[no-untyped-call]
        hidden[:, :-1][mask], head_weight, input_ids[:, 1:][mask], blocks
    )
    sums = torch.stack([t.sum() for t in token.split(counts.tolist())]) if len(token) else token.new_zeros(len(counts))
    return sums, counts.to(torch.float32)
