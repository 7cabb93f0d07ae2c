"""Summed log-probabilities of the response tokens of a batch of sequences."""

from __future__ import annotations

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
