"""Held-out evaluation: SPIN's diagnostics of a policy against the iteration's reference, and greedy answers
for a task metric. Runs inside the training loop (under FSDP) and anywhere else a model is at hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jobs.spin import PairBatch, answer_match, metrics_from_sums, pair_metric_sums, spin_loss
from jobs.train_step import policy_logps


@torch.no_grad()
def held_out_diagnostics(model: Any, batches: Sequence[PairBatch], *, beta: float, loss_type: Any) -> dict[str, float]:
    """SPIN metrics of `model` on held-out pairs whose reference log-probs are stored, plus the real
    responses' per-token NLL (`nll/real`)."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    logp_real = count_real = 0.0
    for batch in batches:
        assert batch.ref_logps_real is not None and batch.ref_logps_generated is not None
        real, generated, tokens = policy_logps(model, batch)
        out = spin_loss(
            real, generated, batch.ref_logps_real, batch.ref_logps_generated, beta=beta, loss_type=loss_type
        )
        batch_sums = pair_metric_sums(out, real, generated, beta)
        sums = batch_sums if sums is None else sums + batch_sums
        logp_real += float(real.sum())
        count_real += float(tokens[: batch.num_pairs].sum())
    model.train(was_training)
    if sums is None:
        raise ValueError("no held-out pairs to evaluate on")
    return metrics_from_sums(sums) | {"nll/real": -logp_real / count_real}


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
    """Exact match of the final answers and how many prompts it was measured on."""
    score, counted = answer_match(list(answers), list(reals), pattern)
    return {"task_metric": score, "task_prompts": counted}
