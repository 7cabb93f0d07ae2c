"""Choosing an iteration's prompts and shaping its (prompt, real, generated) pairs.

All of it is deterministic given a seed, so a re-run or a resumed iteration picks the very same prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jobs.spin.names import PairRule


def sample_key(seed: int, *parts: object) -> int:
    """A stable 64-bit pseudo-random key for (seed, parts...), identical on every machine and Python run."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class RowRef:
    """Where a usable SFT row lives: its prompt id, source file (or corpus) and 0-based row number in it, and a key
    of the prompt's content, so that one prompt under two ids still lands in one split."""

    prompt_id: str
    source: str
    row: int
    prompt_key: str = ""

    @property
    def content(self) -> str:
        return self.prompt_key or self.prompt_id


@dataclass(frozen=True)
class PromptSelection:
    """An iteration's prompts: `train` feeds generation and training; `validation` is what every choice is made
    on (the best checkpoint, the guard, a baseline's lr); `test` is only reported. The three share no prompt."""

    train: tuple[RowRef, ...]
    validation: tuple[RowRef, ...]
    test: tuple[RowRef, ...]
    unique_prompts: int
    duplicate_rows: int


def select_prompts(
    rows: Iterable[RowRef], *, count: int, validation: int, test: int, seed: int, iteration: int
) -> PromptSelection:
    """Deduplicate rows by prompt id, set the evaluation splits aside, and sample `count` training prompts.

    The first row of each prompt id wins. The evaluation prompts are the `validation + test` prompt contents with
    the smallest key(seed, "held-out", content): the first `validation` of them validate, the next `test` test.
    They are the same in every iteration, and no row with their content is ever a training prompt. The training
    sample is the `count` remaining prompts with the smallest key(seed, iteration, id): a seeded sample without
    replacement ("bottom-k"), independent of row order and of how the data was split into files. If fewer prompts
    remain than `count`, all of them are taken.
    """
    if min(count, validation, test) < 0:
        raise ValueError(f"prompt counts must be >= 0; got count={count}, validation={validation}, test={test}")
    first: dict[str, RowRef] = {}
    total = 0
    for ref in sorted(rows, key=lambda r: (r.source, r.row)):
        total += 1
        first.setdefault(ref.prompt_id, ref)
    by_content: dict[str, RowRef] = {}
    for ref in first.values():
        by_content.setdefault(ref.content, ref)
    ranked = sorted(by_content.values(), key=lambda r: sample_key(seed, "held-out", r.content))
    held = ranked[: validation + test]
    held_contents = {r.content for r in held}
    rest = [r for r in first.values() if r.content not in held_contents]
    train = sorted(rest, key=lambda r: sample_key(seed, "iteration", iteration, r.prompt_id))[:count]

    def in_order(refs: Iterable[RowRef]) -> tuple[RowRef, ...]:
        return tuple(sorted(refs, key=lambda r: (r.source, r.row)))

    return PromptSelection(
        train=in_order(train),
        validation=in_order(held[:validation]),
        test=in_order(held[validation:]),
        unique_prompts=len(first),
        duplicate_rows=total - len(first),
    )


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


def pick_generated(
    real_ids: Sequence[int],
    samples: Sequence[Sequence[int]],
    rule: PairRule,
    correct: Sequence[bool] | None = None,
) -> int | None:
    """Index of the sample that becomes the pair's generated side, or None when no sample qualifies.

    first: sample 0 (the paper). differs: the first sample whose tokens differ from the real answer's.
    incorrect: the first sample the task metric scores wrong (`correct` gives the metric's reading of each).
    """
    if rule == "first":
        return 0 if samples else None
    if rule == "differs":
        return next((i for i, s in enumerate(samples) if list(s) != list(real_ids)), None)
    if correct is None or len(correct) != len(samples):
        raise ValueError("the 'incorrect' rule needs the task metric's verdict on every sample")
    return next((i for i, ok in enumerate(correct) if not ok), None)


def scored_generated_length(real_ids: Sequence[int], generated_ids: Sequence[int]) -> int:
    """How many generated tokens count when the loss stops after the first one that differs from the real answer:
    the shared prefix and the first divergent token. Tokens after it are shared by right and wrong continuations
    (".", EOS), and pushing them down pushes the real answer down too (Pal et al. 2024)."""
    shared = 0
    for r, g in zip(real_ids, generated_ids, strict=False):
        if r != g:
            break
        shared += 1
    return min(shared + 1, len(generated_ids))
