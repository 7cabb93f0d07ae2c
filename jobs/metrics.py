"""What an iteration measured: the typed `iter_<k>/metrics.json`, written by the controller and read by the
report, the stopping rule, the control plane and the command line.

One vocabulary end to end: SPIN's metrics keep their TRL-style names in the file (`rewards/accuracies`,
`logps/real`, ...; see jobs/spin/names.py), as Python attributes with `_` for `/` (`rewards_accuracies`). Only
the Prometheus exporter renames them, because Prometheus needs snake_case.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from jobs.config import IterationPlan
from services.generator.schemas import GeneratorInfo

StageName = Literal["generate", "score", "baseline", "train", "publish", "evaluate"]


class Record(BaseModel):
    # Files written by an older version may carry keys this one no longer writes: they are read past.
    model_config = ConfigDict(
        frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


class SpinMetrics(Record):
    """Means over pairs of SPIN's diagnostics (jobs/spin/names.py)."""

    loss: float
    rewards_real: float = Field(alias="rewards/real")
    rewards_generated: float = Field(alias="rewards/generated")
    rewards_margins: float = Field(alias="rewards/margins")
    rewards_accuracies: float = Field(alias="rewards/accuracies")
    logps_real: float = Field(alias="logps/real")
    logps_generated: float = Field(alias="logps/generated")
    gain_real: float = Field(alias="gain/real")
    gain_generated: float = Field(alias="gain/generated")
    margin: float


class TrainStep(SpinMetrics):
    """One optimizer step, reduced over every rank."""

    step: int
    epoch: int
    learning_rate: float
    tokens_per_s: float
    grad_norm: float | None = None


class HeldOutEval(SpinMetrics):
    """The policy at a training step against the iteration's reference, on the held-out pairs."""

    step: int
    nll_real: float = Field(alias="nll/real")
    task_metric: float | None = None
    task_prompts: int | None = None


class SelectedCheckpoint(HeldOutEval):
    """The evaluation whose weights were published (the best one, with select_best)."""

    score: float
    path: str | None = None  # where its weights wait; None for step 0, the starting model itself


class TrainSummary(Record):
    pairs: int
    pairs_from_iterations: list[int]
    steps: int
    resumed_at_steps: list[int] = []
    stopped_early_at: int | None = None
    guard_fired_at: list[int] = []
    evals: list[HeldOutEval] = []
    selected: SelectedCheckpoint | None = None
    history: list[TrainStep] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def final(self) -> TrainStep | None:
        return self.history[-1] if self.history else None


class GenerateSummary(Record):
    rows: int
    prompts: int
    unique_prompts: int
    duplicate_rows: int
    bad_rows: int
    bad_row_examples: list[str] = []
    held_out_prompts: int
    generated_tokens: int = 0
    tokens_per_s: float = 0.0
    generator: GeneratorInfo | None = None


class ScoreSummary(Record):
    rows: int
    dtype: str


class Evaluation(Record):
    """A served model's greedy answers to the held-out prompts, and the real answers' likelihood under it."""

    model_version: int
    held_out_prompts: int
    generated_tokens: float  # mean answer length, in tokens
    task_metric: float | None = None
    task_prompts: int | None = None
    nll_real: float | None = Field(None, alias="nll/real")
    selected_step: int | None = None
    diagnostics: HeldOutEval | None = None  # SPIN's held-out diagnostics of the published checkpoint


class IterationMetrics(Record):
    """iter_<k>/metrics.json."""

    iteration: int
    name: str
    settings: IterationPlan
    model_in: str
    model_out: str
    stage_seconds: dict[StageName, float]
    generate: GenerateSummary
    score: ScoreSummary
    train: TrainSummary
    baseline: Evaluation | None = None  # iteration 0 only: the SFT model, evaluated the same way
    evaluation: Evaluation | None = None


class SFTTrainSummary(Record):
    steps: int
    batch_size: int
    examples: int
    learning_rate: float
    final_loss: float


class BaselineMetrics(Evaluation):
    """baselines/<name>/metrics.json: a baseline model, evaluated like the SPIN models, and how it was trained."""

    train: SFTTrainSummary
