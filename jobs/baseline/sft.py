"""Supervised fine-tuning in one process: how the demo makes its SFT model, and the "continued SFT" baseline
SPIN is compared against.

The loss is the mean negative log-likelihood of the response tokens, through the same chat encoding and
masked log-probs as SPIN, so SFT and SPIN see identical token sequences.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from jobs.chat import encode_prompt, encode_response, pad_id
from jobs.hf import load_causal_lm, load_tokenizer, save_hf_checkpoint
from jobs.spin.collate import pad_sequences
from jobs.spin.logprobs import sequence_logps
from jobs.spin.metrics import response_nll
from jobs.spin.schedule import lr_multiplier

Example = tuple[list[int], list[int]]  # (prompt ids, response ids ending with EOS)


def encode_examples(tokenizer: Any, examples: Sequence[tuple[list[dict[str, str]], str]]) -> list[Example]:
    """(prompt messages, response) → (prompt ids, response ids ending with EOS)."""
    return [(encode_prompt(tokenizer, m), encode_response(tokenizer, r)) for m, r in examples]


def response_logps(model: Any, batch: Sequence[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each example's response given its prompt, and its response tokens, each (B,)."""
    ids, attention, positions, loss_mask = pad_sequences([p for p, _ in batch], [r for _, r in batch], pad)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
    return sequence_logps(logits, ids, loss_mask)


def sft_loss(model: Any, batch: Sequence[Example], pad: int) -> torch.Tensor:
    """Mean negative log-likelihood per response token over a batch."""
    return response_nll(*response_logps(model, batch, pad))


def sft(
    model_dir: str,
    out_dir: str | Path,
    examples: Sequence[tuple[list[dict[str, str]], str]],
    **kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune `model_dir` on (prompt messages, response) `examples`; see `sft_on_tokens`."""
    return sft_on_tokens(model_dir, out_dir, encode_examples(load_tokenizer(model_dir), examples), **kwargs)


def sft_on_tokens(
    model_dir: str,
    out_dir: str | Path,
    data: Sequence[Example],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 20,
    schedule: Literal["linear", "cosine", "constant"] = "cosine",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model_dir` on (prompt ids, response ids) for `steps` AdamW steps and save to `out_dir`.

    The learning rate warms up over `warmup_steps`, then decays to 0 ("cosine" or "linear").
    """
    if not data:
        raise ValueError("no examples to fine-tune on")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_causal_lm(model_dir).train()
    pad = pad_id(load_tokenizer(model_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(steps, warmup_steps, schedule))
    order: list[int] = []
    start, losses = time.perf_counter(), []
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(data)), len(data))
        batch = [data[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = sft_loss(model, batch, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, losses[-1])
    save_hf_checkpoint(model.state_dict(), model_dir, out_dir, torch.float32)
    return {"steps": steps, "seconds": time.perf_counter() - start, "final_loss": sum(losses[-10:]) / min(10, steps)}
