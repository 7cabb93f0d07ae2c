"""How an iteration's pairs turn into optimizer steps, and the learning-rate schedule over those steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StepPlan:
    """Steps of one training stage when `num_pairs` are split equally over `world_size` workers.

    Ray Data's equal split gives each worker num_pairs // world_size rows (dropping at most world_size − 1),
    so every rank runs the same number of micro-batches, as FSDP's collectives require. An optimizer step
    accumulates `accumulation_steps` micro-batches; the last step of an epoch may accumulate fewer. With
    `max_steps` the stage takes exactly that many steps, passing over the pairs as often as it needs to.
    """

    num_pairs: int
    world_size: int
    micro_batch_size: int
    accumulation_steps: int
    epochs: int
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.rows_per_worker < 1:
            raise ValueError(f"{self.num_pairs} pairs cannot feed {self.world_size} workers: need at least one each")

    @property
    def rows_per_worker(self) -> int:
        return self.num_pairs // self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.rows_per_worker / self.micro_batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation_steps)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.steps_per_epoch * self.epochs

    @property
    def epochs_to_run(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def step_of(self, epoch: int, micro_index: int) -> int:
        """0-based optimizer step that micro-batch `micro_index` of `epoch` belongs to."""
        return epoch * self.steps_per_epoch + micro_index // self.accumulation_steps

    def ends_step(self, micro_index: int) -> bool:
        return (micro_index + 1) % self.accumulation_steps == 0 or micro_index + 1 == self.micro_batches_per_epoch

    def pairs_in_step(self, micro_index: int) -> int:
        """Pairs one worker contributes to the optimizer step containing `micro_index`."""
        first = (micro_index // self.accumulation_steps) * self.accumulation_steps
        start = first * self.micro_batch_size
        end = min((first + self.accumulation_steps) * self.micro_batch_size, self.rows_per_worker)
        return end - start


def lr_multiplier(
    total_steps: int, warmup_steps: int, kind: Literal["linear", "cosine", "constant"] = "linear"
) -> Callable[[int], float]:
    """Multiplier of the peak learning rate for the update made at 0-based `step`.

    Linear warm-up over `warmup_steps`, then a decay towards 0 at total_steps: linear (HF's
    get_linear_schedule_with_warmup), half a cosine, or none. Unlike HF's, the first update already moves
    (1/warmup of the peak, not 0).
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return multiplier


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up steps for a share of the run, rounded up (so a short run still warms up)."""
    return math.ceil(warmup_ratio * total_steps)
