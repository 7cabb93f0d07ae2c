"""Typed configuration of a SPIN run, loaded from YAML.

Pydantic and the standard library only, so the control plane can validate a config without torch or Ray.
Defaults are the paper's (Chen et al. 2024, zephyr-7b-sft-full on UltraChat-200k, §5 and the official
configs/config.yaml) unless a comment says why not.

    cfg = SpinConfig.from_yaml("jobs/configs/demo_cpu.yaml", overrides=["train.beta=0.2"])
    cfg.iteration(1)  # what iteration 1 runs with: its prompts and its resolved train config
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, field_validator, model_validator

from cluster.files import absolute
from jobs.spin.names import LossType, NoNegative, PairRule
from services.generator.schemas import EngineSettings, Strict, custom_resources

# Ray's workers run in other folders: a relative path means the loading process's working folder, made absolute
# (and resolved) at load, exactly as every reader of the location will open it.
Location = Annotated[str, AfterValidator(absolute)]


class ModelConfig(Strict):
    path: Location = Field(description="Hugging Face checkpoint folder of the SFT model (iteration 0's reference).")
    dtype: Literal["bfloat16", "float32"] = "bfloat16"


class DataConfig(Strict):
    path: Location | None = Field(None, description="JSONL or Parquet file, folder or pyarrow.fs URI (s3://...).")
    source: Literal["file", "chatterbot"] = Field(
        "file", description="`chatterbot` reads the English chatterbot-corpus package instead of `path`."
    )
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    bad_rows: Literal["fail", "skip"] = Field(
        "fail", description="A row that cannot be used either stops the run, naming it, or is skipped and counted."
    )
    # The official reformat.py keeps only the first user/assistant exchange of each conversation.
    turn: Literal["first", "last"] = "first"
    # Prompts set aside, never trained on: every choice (best checkpoint, guard, a baseline's lr) is made on the
    # validation split, and results are reported on the test split only.
    validation_prompts: int = Field(0, ge=0, description="Prompts every choice is made on.")
    test_prompts: int = Field(0, ge=0, description="Prompts results are reported on, and nothing else.")
    long_prompts: Literal["truncate", "skip"] = Field(
        "truncate",
        description="A prompt over train.max_prompt_length: fitted (oldest turns, then the start of its text, cut; "
        "the chat template kept whole) and counted, or left out of training and counted.",
    )
    seed: int = 42  # the official code shuffles with seed 42

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("data.path is required when data.source is 'file'")
        return self


class SamplingConfig(Strict):
    # spin/generate_vllm.py samples at temperature 1.0, top_p 1.0: the model's own distribution.
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # None: a response may use whatever max_length leaves after its prompt, the same cap as the real
    # response. The paper's 256 against up to 512 real tokens made the two sides unequal (uclaml/SPIN#9).
    max_new_tokens: int | None = Field(None, ge=1)
    seed: int = 0


class PairsConfig(Strict):
    """How a prompt's samples become its pair's generated side."""

    # 1 and "first" are the paper's: one sample, whatever it is.
    samples_per_prompt: int = Field(1, ge=1, le=64, description="Samples drawn per prompt, in one vLLM request.")
    rule: PairRule = "first"
    no_negative: NoNegative = Field(
        "replay",
        description="A prompt none of whose samples qualifies: kept as an identical pair (the real answer on both "
        "sides, trained on by the NLL term only), or skipped and counted.",
    )
    # Where the reference's log-prob of each fresh sample comes from: the score stage's forward pass, or the
    # generator, which serves the reference (model k) and returns each sampled token's log-prob (vLLM reports the
    # raw model's, before temperature and top-p), so the score stage runs its model on the real answers only.
    # Replays, samples given an EOS they lacked and carried pairs are scored by the forward pass either way.
    sample_logps: Literal["forward", "generator"] = "forward"


class GeneratorConfig(EngineSettings):
    """The Ray Serve vLLM deployment: its engine settings, and how the generate stage calls it."""

    # Without a bound, vLLM's CPU backend takes ~92% of RAM for its KV cache. 256 MiB is ~5,800 tokens of
    # SmolLM2-135M in fp32 (46 KB a token); raise it for bigger batches. Ignored on GPUs.
    kv_cache_memory_bytes: int | None = Field(256 * 2**20, ge=2**20)
    # callers × prompts_per_request in flight fill max_num_seqs, so the engine batches as wide as it can; twice as
    # many ran at 0.62x (tests/bench, SmolLM2 on CPU: the KV cache then held fewer sequences than were running).
    prompts_per_request: int = Field(32, ge=1)
    callers: int = Field(2, ge=1, description="Ray Data tasks sending prompts to the deployment concurrently.")
    request_timeout_s: float = Field(600.0, gt=0.0)  # a bad request can hang vLLM silently; never wait forever
    # After the run's last iteration, keep serving its best model on validation (its last one when nothing was
    # evaluated) to OpenAI clients and evaluation harnesses until the run is deleted or cancelled, or `spin
    # release`; off, the generator's CPUs or GPUs are freed at once.
    keep_serving: bool = False


class GuardConfig(Strict):
    """What to do once the real responses' held-out log-prob gain turns negative (see jobs/spin/guard.py)."""

    action: Literal["none", "lower_lr", "stop"] = "none"
    patience: int = Field(1, ge=1, description="Negative readings in a row before acting.")
    threshold: float = 0.0
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)


class EvalConfig(Strict):
    """Evaluation on the validation and test splits (data.validation_prompts, data.test_prompts)."""

    # A task metric from the data itself: exact match of the final answer, found by `answer_pattern` in the
    # real and in the generated response. The default reads "The answer is 42" (the arithmetic task);
    # GSM8k's answers would use "#### (-?[\d,]+)".
    task: Literal["none", "answer_match"] = "none"
    answer_pattern: str = r"The answer is (-?\d+)"  # its first group is the answer
    max_new_tokens: int = Field(256, ge=1)
    every_steps: int | None = Field(None, ge=1, description="Evaluate during training every N steps (and at the end).")
    prompts_during_training: int = Field(64, ge=1, description="Validation prompts answered at each evaluation.")
    select_best: bool = Field(True, description="Publish the best evaluated checkpoint, not the last.")
    # The baseline SPIN must beat, given its best lr: each candidate is trained at SPIN's steps and sequences per
    # step, and the one with the best validation score is reported on test. Empty: no baseline.
    continued_sft_learning_rates: list[float] = Field(default_factory=list, max_length=8)

    @field_validator("answer_pattern")
    @classmethod
    def _pattern_with_a_group(cls, pattern: str) -> str:
        try:
            groups = re.compile(pattern).groups
        except re.error as e:
            raise ValueError(f"eval.answer_pattern {pattern!r} is not a regular expression: {e}") from e
        if groups < 1:
            raise ValueError(f"eval.answer_pattern {pattern!r} has no group: its first group must capture the answer")
        return pattern

    @field_validator("continued_sft_learning_rates")
    @classmethod
    def _positive_rates(cls, rates: list[float]) -> list[float]:
        if any(r <= 0 for r in rates):
            raise ValueError(f"eval.continued_sft_learning_rates must be positive; got {rates}")
        return rates


class StoppingConfig(Strict):
    """When a run stops by itself (see jobs/spin/stopping.py); off unless enabled."""

    enabled: bool = False
    accuracy_band: float = Field(0.05, ge=0.0, le=0.5)
    margin_tolerance: float = Field(0.1, ge=0.0)
    patience: int = Field(2, ge=0, description="Iterations without a better task metric (0: never on this ground).")
    min_iterations: int = Field(1, ge=1)


class TrainConfig(Strict):
    loss_type: LossType = "sigmoid"
    beta: float = Field(0.1, gt=0.0)
    learning_rate: float = Field(5e-7, gt=0.0)
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    lr_scheduler: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)  # HF Trainer default, which the official code keeps
    max_grad_norm: float | None = Field(1.0, gt=0.0)  # likewise
    epochs: int = Field(2, ge=1)
    # A fixed step budget per iteration (the pairs repeat as needed), so SPIN and its baselines take equal steps.
    # None: `epochs` passes over the pairs, as in the paper.
    max_steps: int | None = Field(None, ge=1)
    global_batch_size: int = Field(64, ge=1)  # 8 GPUs × 8 per device × 1 accumulation step
    micro_batch_size: int = Field(8, ge=1, description="Pairs per worker per forward pass.")
    max_prompt_length: int = Field(512, ge=1)
    max_length: int = Field(1024, ge=2)
    # Pairs whose generation equals the real response give exactly zero SPIN gradient. The paper keeps them, and
    # with the NLL term below they are replay of the real answers; dropping them trains on the failures only.
    drop_identical_pairs: bool = False
    # The NLL term on the real answers (RPO: Pang et al. 2024 found it "crucial": GSM8K 55.6 → 81.6 on Llama-2-70B,
    # 61.8 without it). Off in the SPIN paper; on by default here, because without it, at a learning rate that
    # changes a small model's answers, SPIN pushed the real answers down with its own (exact match 0.81 → 0.61 on
    # arithmetic, the real answers' log-prob −0.21 → −1.75, measured on the demo's model).
    real_nll_weight: float = Field(1.0, ge=0.0, description="Weight of an added NLL term on the real responses.")
    length_normalize: bool = Field(False, description="Compare mean per-token log-probs instead of sums.")
    dpop_lambda: float = Field(50.0, ge=0.0)  # the "dpop" loss's λ; the Smaug paper's value
    # Count the generated answer only up to its first token that differs from the real one (off by default).
    mask_after_divergence: bool = False
    guard: GuardConfig = GuardConfig()
    num_workers: int = Field(8, ge=1)  # the paper trained on 8 A100s
    use_gpu: bool = True
    cpus_per_worker: float = Field(1.0, ge=0.0)
    # Custom Ray resources each Train worker needs, to put workers on the nodes that advertise them.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    precision: Literal["bf16", "fp32"] = "bf16"
    # Response tokens per LM-head block: the log-probs never hold the (rows, length, vocabulary) logits, whose
    # fp32 copy, softmax and gradient were the largest activations of SmolLM2-135M's update (vocabulary 49,152).
    # None: the model's full logits (for heads that are not a plain linear map).
    logprob_chunk_tokens: int | None = Field(512, ge=1)
    # Recompute each decoder layer's activations in backward instead of keeping them (transformers' gradient
    # checkpointing): less memory for one more forward pass.
    activation_checkpointing: bool = False
    checkpoint_every_steps: int = Field(100, ge=1)
    max_failures: int = Field(3, ge=-1, description="Worker-group restarts before the iteration fails (-1: no limit).")
    seed: int = 42

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return custom_resources(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be below train.max_length "
                f"({self.max_length}) to leave room for a response"
            )
        per_step = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size × train.num_workers ({self.micro_batch_size} × {self.num_workers})"
            )
        if self.precision == "bf16" and not self.use_gpu:
            raise ValueError("train.precision 'bf16' needs train.use_gpu; use 'fp32' on CPU")
        if self.drop_identical_pairs and self.real_nll_weight > 0:
            raise ValueError(
                "train.drop_identical_pairs with train.real_nll_weight > 0 would drop the NLL term's replay of the "
                "answers the model already gets right and train on its failures only; set one of them off"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)


class IterationSettings(Strict):
    """Per-iteration overrides; a field left out takes the run-wide value."""

    prompts: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0.0)
    beta: float | None = Field(None, gt=0.0)
    loss_type: LossType | None = None
    mix_previous: bool | None = None


class IterationPlan(Strict):
    """What iteration k runs with, after its overrides: one train config, so every worker holds one beta, one
    learning rate, one loss type and one epoch count."""

    index: int
    prompts: int
    mix_previous: bool
    train: TrainConfig


class SFTConfig(Strict):
    """`spin sft CONFIG`: supervised fine-tuning of `base_model` into the run's `model.path`, on the run's own
    training split (its validation and test prompts are never trained on), stopping once the validation score
    has not improved for `patience` evaluations. The best evaluated weights are kept."""

    base_model: Location
    learning_rate: float = Field(gt=0.0)
    batch_size: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # early stopping, not the schedule, ends it
    eval_every_steps: int = Field(50, ge=1)
    patience: int = Field(3, ge=1, description="Evaluations without a better validation score before stopping.")
    seed: int = 0


class RayConfig(Strict):
    address: str | None = Field(None, description="Join this cluster; None starts a local one on 127.0.0.1.")
    # Logical CPUs for a local cluster. More than the cores on purpose: on 2 cores, Ray Data stages otherwise
    # wait forever for a CPU that the Serve replica and the Train workers hold.
    num_cpus: float | None = 4
    object_store_memory: int | None = 512 * 2**20


class TrackingConfig(Strict):
    """Experiment tracking, off by default: an MLflow run per SPIN run, fed from the Ray Train controller (workers
    hold no tracker credentials), one global step across iterations, the metrics under their metrics.json names."""

    backend: Literal["none", "mlflow"] = "none"
    # Where MLflow's tracking server is (http://host:5000), or a local store (a folder, sqlite:///file.db).
    uri: str | None = None
    experiment: str = Field("spin", min_length=1)

    @model_validator(mode="after")
    def _mlflow_needs_a_uri(self) -> TrackingConfig:
        if self.backend == "mlflow" and not self.uri:
            raise ValueError("tracking.backend 'mlflow' needs tracking.uri (its tracking server or store)")
        return self


# The paper's schedule: four iterations, lr 5e-7 for iterations 0-1 and 1e-7 afterwards.
_PAPER_SCHEDULE = [
    IterationSettings(),
    IterationSettings(),
    IterationSettings(learning_rate=1e-7),
    IterationSettings(learning_rate=1e-7),
]


class SpinConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    run_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Set by the control plane; headless runs use the name."
    )
    storage_uri: Location = Field(description="Where iter_<k>/ folders go: a local path or a pyarrow.fs URI.")
    model: ModelConfig
    data: DataConfig
    sampling: SamplingConfig = SamplingConfig()
    pairs: PairsConfig = PairsConfig()
    generator: GeneratorConfig = GeneratorConfig()
    train: TrainConfig = TrainConfig()
    prompts_per_iteration: int = Field(50_000, ge=1)
    mix_previous: bool = True  # iteration t trains on the pairs of t and t−1
    iterations: list[IterationSettings] = Field(default_factory=lambda: list(_PAPER_SCHEDULE), min_length=1)
    eval: EvalConfig = EvalConfig()
    stopping: StoppingConfig = StoppingConfig()
    sft: SFTConfig | None = None
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _evaluation_needs_its_splits(self) -> SpinConfig:
        needs = self.eval.task != "none" or self.eval.every_steps or self.stopping.enabled
        if (needs or self.eval.continued_sft_learning_rates) and self.data.validation_prompts == 0:
            raise ValueError(
                "evaluation, the stopping rule and the continued-SFT baseline choose on the validation split: "
                "set data.validation_prompts"
            )
        if self.train.guard.action != "none" and not self.eval.every_steps:
            raise ValueError("train.guard reads the validation evaluations: set eval.every_steps")
        if self.pairs.rule == "incorrect" and self.eval.task == "none":
            raise ValueError("pairs.rule 'incorrect' scores samples with the task metric: set eval.task")
        return self

    @property
    def generator_app(self) -> str:
        """The run's own generator application (and its HTTP route prefix), so runs on one cluster never sample
        from each other's model."""
        return f"spin-generator-{self.name}-{hashlib.sha1(self.storage_uri.encode()).hexdigest()[:6]}"

    @property
    def identity(self) -> str:
        """Who owns the run's storage: the control plane's run id, or the name of a headless run."""
        return self.run_id or f"headless:{self.name}"

    def fingerprint(self) -> str:
        """A digest of every setting that shapes what the run writes; the ray, generator sizing, stopping and
        per-iteration sections do not (an iteration's own settings are recorded in its metrics.json), nor the
        continued-SFT grid (the baseline records its own), nor where the Train workers are placed."""
        unshaping = {"name", "run_id", "ray", "generator", "stopping", "iterations", "tracking"}
        exclude = dict.fromkeys(unshaping, True) | {
            "eval": {"continued_sft_learning_rates": True},
            "train": {"resources_per_worker": True},
        }
        shaping = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def num_iterations(self) -> int:
        return len(self.iterations)

    def iteration(self, k: int) -> IterationPlan:
        if not 0 <= k < self.num_iterations:
            raise IndexError(f"iteration {k} is outside this run's {self.num_iterations} iterations")
        o = self.iterations[k]
        train = {name: getattr(o, name) for name in ("epochs", "learning_rate", "beta", "loss_type")}
        return IterationPlan(
            index=k,
            prompts=self.prompts_per_iteration if o.prompts is None else o.prompts,
            mix_previous=self.mix_previous if o.mix_previous is None else o.mix_previous,
            train=TrainConfig.model_validate(
                self.train.model_dump() | {key: value for key, value in train.items() if value is not None}
            ),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> SpinConfig:
        return cls.from_yaml_text(Path(path).read_text(), overrides, source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, overrides: list[str] | None = None, source: str = "config") -> SpinConfig:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
        return cls.model_validate(apply_overrides(data, overrides or []))

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides (values parsed as YAML) to a nested dict, returning a new one."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return out
