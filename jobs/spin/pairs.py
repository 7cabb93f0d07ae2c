"""Choosing an iteration's prompts and shaping its (prompt, real, generated) pairs.

All of it is deterministic given a seed, so a re-run or a resumed iteration picks the very same prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def sample_key(seed: int, *parts: object) -> int:
    """A stable 64-bit pseudo-random key for (seed, parts...), identical on every machine and Python run."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class RowRef:
    """Where a usable SFT row lives: its prompt id, source file (or corpus) and 0-based row number in it."""

    prompt_id: str
    source: str
    row: int


@dataclass(frozen=True)
class PromptSelection:
    """An iteration's prompts: `train` feeds generation and training, `held_out` is never trained on."""

    train: tuple[RowRef, ...]
    held_out: tuple[RowRef, ...]
    unique_prompts: int
    duplicate_rows: int


def select_prompts(rows: Iterable[RowRef], *, count: int, held_out: int, seed: int, iteration: int) -> PromptSelection:
    """Deduplicate rows by prompt id, set a held-out split aside, and sample `count` training prompts.

    The first row of each prompt id wins. The held-out split is the `held_out` prompts with the smallest
    key(seed, "held-out", id): the same in every iteration. The training sample is the `count` remaining
    prompts with the smallest key(seed, iteration, id): a seeded sample without replacement ("bottom-k"),
    independent of row order and of how the data was split into files. If fewer prompts remain than
    `count`, all of them are taken.
    """
    if count < 0 or held_out < 0:
        raise ValueError(f"count and held_out must be >= 0; got count={count}, held_out={held_out}")
    first: dict[str, RowRef] = {}
    total = 0
    for ref in sorted(rows, key=lambda r: (r.source, r.row)):
        total += 1
        first.setdefault(ref.prompt_id, ref)
    by_held_out_key = sorted(first.values(), key=lambda r: sample_key(seed, "held-out", r.prompt_id))
    held = by_held_out_key[:held_out]
    rest = by_held_out_key[held_out:]
    train = sorted(rest, key=lambda r: sample_key(seed, "iteration", iteration, r.prompt_id))[:count]
    return PromptSelection(
        train=tuple(sorted(train, key=lambda r: (r.source, r.row))),
        held_out=tuple(sorted(held, key=lambda r: (r.source, r.row))),
        unique_prompts=len(first),
        duplicate_rows=total - len(first),
    )


def truncate_prompt(prompt_ids: Sequence[int], max_prompt_length: int) -> list[int]:
    """Keep the last max_prompt_length tokens: the end of a prompt is what the answer depends on."""
    return list(prompt_ids[-max_prompt_length:]) if len(prompt_ids) > max_prompt_length else list(prompt_ids)


def response_budget(prompt_length: int, max_length: int, max_new_tokens: int | None = None) -> int:
    """Tokens a response may take so that prompt + response fits in max_length (and max_new_tokens)."""
    budget = max_length - prompt_length
    if max_new_tokens is not None:
        budget = min(budget, max_new_tokens)
    if budget < 1:
        raise ValueError(f"a prompt of {prompt_length} tokens leaves no room for a response in {max_length}")
    return budget


def truncate_response(response_ids: Sequence[int], budget: int) -> tuple[list[int], bool]:
    """Cut a response to `budget` tokens; returns (ids, whether it was cut)."""
    if len(response_ids) > budget:
        return list(response_ids[:budget]), True
    return list(response_ids), False


def training_iterations(iteration: int, mix_previous: bool) -> list[int]:
    """Iterations whose pairs iteration t trains on: t, and t−1 when mixing (the paper's recipe from t=1)."""
    return [iteration - 1, iteration] if mix_previous and iteration > 0 else [iteration]


def completed_response(token_ids: Sequence[int], finished: bool, eos_id: int) -> list[int]:
    """A generated response in the form real responses take: ending with exactly one EOS when the model
    ended its turn, and as sampled when it ran out of tokens."""
    ids = list(token_ids)
    if finished and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    return ids
