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
    """One optimizer step, reduced over every rank: all its pairs, and this iteration's (fresh) and the previous
    iteration's (carried) apart."""

    step: int
    epoch: int
    learning_rate: float
    tokens_per_s: float
    tokens: int = 0  # trained on in this step, all ranks (0 in files written before it was recorded)
    grad_norm: float | None = None
    fresh: SpinMetrics | None = None
    carried: SpinMetrics | None = None


class HeldOutEval(SpinMetrics):
    """The policy at a training step against the iteration's reference, on the validation pairs."""

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
    rows: int  # records written: training and validation prompts
    prompts: int  # training prompts
    unique_prompts: int
    duplicate_rows: int
    bad_rows: int
    bad_row_examples: list[str] = []
    validation_prompts: int
    test_prompts: int
    sampled_tokens: int = 0  # every sample's tokens (k per prompt)
    generated_tokens: int = 0  # the tokens of the pairs' generated sides
    tokens_per_s: float = 0.0  # sampled tokens per second of the stage
    identical_pairs: int = 0  # training pairs whose generated side equals the real answer
    without_negative: int = 0  # training prompts none of whose samples met pairs.rule
    skipped_prompts: int = (
        0  # dropped from training: no negative (pairs.no_negative "skip") or too long (data.long_prompts)
    )
    truncated_prompts: int = 0  # prompts fitted to train.max_prompt_length
    generator: GeneratorInfo | None = None


class ScoreSummary(Record):
    rows: int  # this iteration's pairs
    dtype: str
    carried: int = 0  # the previous iteration's training pairs, rescored by this iteration's model


class SplitScores(Record):
    """A model on one evaluation split (means over its prompts)."""

    prompts: int
    task_metric: float | None = None  # share of answers the task metric scores right, where the real answer has one
    task_prompts: int | None = None  # the prompts it was measured on
    nll: float  # the real answers' per-token negative log-likelihood, averaged over prompts
    answer_tokens: float  # greedy answer length


class Evaluation(Record):
    """A served model's greedy answers to the validation and test prompts, and the real answers' likelihood under
    it; the per-prompt results are stored beside (evaluation/), for paired comparisons."""

    model: str
    model_version: int
    validation: SplitScores | None = None  # what every choice is made on
    test: SplitScores | None = None  # what results are reported on
    selected_step: int | None = None
    diagnostics: HeldOutEval | None = None  # SPIN's validation diagnostics of the published checkpoint


class IterationMetrics(Record):
    """iter_<k>/metrics.json."""

    iteration: int
    name: str
    settings: IterationPlan
    model_in: str
    model_out: str
    stage_seconds: dict[StageName, float]
    # Where the stages' time went (the stages this attempt ran), in seconds. Parts, summed over every time they ran:
    # generate/serve and baseline/serve (the generator's app and engine start, or its move to the weights),
    # <stage>/first_records (a Ray Data stage's actors starting and loading, with its first batch), <stage>/commit,
    # train/load (each worker group's model load and sharding, rank 0), train/checkpoints, train/evaluations,
    # train/exports. Milestones, from the stage's start ("_at"): train/datasets_at (the pairs read and counted),
    # train/workers_ready_at (the last worker group ready), train/first_step_at.
    stage_parts: dict[str, float] = {}
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
    seconds: float = 0.0


class Candidate(Record):
    """A continued-SFT learning rate tried: its validation scores, and what it cost."""

    learning_rate: float
    validation: SplitScores
    train_seconds: float
    eval_seconds: float


class BaselineMetrics(Evaluation):
    """baselines/continued_sft/metrics.json: the chosen baseline model, evaluated like the SPIN models, how it
    was trained, and every candidate learning rate with its validation score and cost."""

    train: SFTTrainSummary
    candidates: list[Candidate] = []
    chosen_on: Literal["validation"] = "validation"
