"""Supervised fine-tuning in one process: how the demo makes its SFT model, and the "continued SFT"
baseline SPIN is compared against.

The loss is the mean negative log-likelihood of the response tokens, through the same chat encoding and
masked log-probs as SPIN, so SFT and SPIN see identical token sequences.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.chat import encode_prompt, encode_response, pad_id
from jobs.modeling import load_causal_lm, load_tokenizer
from jobs.spin import pad_sequences, sequence_logps


def encode_examples(
    tokenizer: Any, examples: Sequence[tuple[list[dict[str, str]], str]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt messages, response) → (prompt ids, response ids ending with EOS)."""
    return [(encode_prompt(tokenizer, m), encode_response(tokenizer, r)) for m, r in examples]


def response_nll(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad: int) -> torch.Tensor:
    """Mean negative log-likelihood per response token over a batch."""
    ids, attention, positions, loss_mask = pad_sequences([p for p, _ in batch], [r for _, r in batch], pad)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
    logps, tokens = sequence_logps(logits, ids, loss_mask)
    return -logps.sum() / tokens.sum()


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
    data: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 20,
    schedule: str = "cosine",
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
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).train()
    pad = pad_id(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else max(0.0, 1 - progress)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    order: list[int] = []
    start, losses = time.perf_counter(), []
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(data)), len(data))
        batch = [data[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = response_nll(model, batch, pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, losses[-1])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation_config = Path(model_dir) / "generation_config.json"
    if generation_config.exists():
        (out / "generation_config.json").write_bytes(generation_config.read_bytes())
    return {"steps": steps, "seconds": time.perf_counter() - start, "final_loss": sum(losses[-10:]) / min(10, steps)}


@torch.no_grad()
def greedy_answers(model_dir: str, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 32) -> list[str]:
    """Greedy answers with transformers `generate` (one process; used by tests and small evaluations)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    out = []
    for messages in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, messages)])
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id(tokenizer),
        )
        out.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
    return out
