"""Collation of (prompt, real, generated) token sequences into one concatenated forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class PairBatch:
    """B pairs packed as 2B rows: rows [0, B) are prompt+real, rows [B, 2B) are prompt+generated.

    input_ids, attention_mask, position_ids, loss_mask: (2B, T); loss_mask is True on response tokens only.
    ref_logps_real, ref_logps_generated: (B,) summed reference log-probs, or None when not yet scored.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    loss_mask: torch.Tensor
    ref_logps_real: torch.Tensor | None = None
    ref_logps_generated: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device: torch.device | str) -> PairBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return PairBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.loss_mask.to(device),
            move(self.ref_logps_real),
            move(self.ref_logps_generated),
        )


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: Literal["left", "right"] = "right",
    scored: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad prompt+response rows to one length.

    Returns input_ids, attention_mask, position_ids and loss_mask, each (N, T). position_ids count real
    tokens only, so a left-padded row sees the same positions as its right-padded twin. `scored[i]`, when given,
    keeps only the first scored[i] response tokens of row i in the loss mask (None: all of them).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        start = 0 if padding_side == "right" else width - len(row)
        input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
        kept = None if scored is None else scored[i]
        end = start + len(row) if kept is None else start + len(prompt) + kept
        loss_mask[i, start + len(prompt) : end] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids, loss_mask


def collate_pairs(
    prompt_ids: Sequence[Sequence[int]],
    real_ids: Sequence[Sequence[int]],
    generated_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    ref_logps_real: Sequence[float] | torch.Tensor | None = None,
    ref_logps_generated: Sequence[float] | torch.Tensor | None = None,
    padding_side: Literal["left", "right"] = "right",
    scored_generated: Sequence[int] | None = None,
) -> PairBatch:
    """Concatenate B pairs into one (2B, T) batch, real rows first, so one forward pass scores both sides.

    `scored_generated[i]`: only that many tokens of generated response i count (the rest are masked out)."""
    if not (len(prompt_ids) == len(real_ids) == len(generated_ids)):
        raise ValueError(
            f"pair columns differ in length: prompt {len(prompt_ids)}, real {len(real_ids)}, "
            f"generated {len(generated_ids)}"
        )
    if (ref_logps_real is None) != (ref_logps_generated is None):
        raise ValueError("give both reference log-prob columns or neither")
    scored = None if scored_generated is None else [None] * len(real_ids) + list(scored_generated)
    input_ids, attention_mask, position_ids, loss_mask = pad_sequences(
        list(prompt_ids) * 2, list(real_ids) + list(generated_ids), pad_id, padding_side, scored
    )

    def as_tensor(values: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else torch.as_tensor(values, dtype=torch.float32)

    return PairBatch(
        input_ids,
        attention_mask,
        position_ids,
        loss_mask,
        as_tensor(ref_logps_real),
        as_tensor(ref_logps_generated),
    )
