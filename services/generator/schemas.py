"""What the generator deployment takes and returns (pydantic only; no vllm import)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """The base of every typed settings object of the project: unknown fields, values of another type (`true` for
    a number, `"3"` for an integer) and non-finite numbers are errors at load, not later; values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def custom_resources(value: dict[str, float]) -> dict[str, float]:
    """Ray custom resources: positive, finite amounts of names other than the ones Ray sets itself."""
    for name, amount in value.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory") or name.startswith("node:"):
            raise ValueError(f"resource {name!r} is set by Ray itself (use num_cpus / num_gpus); name a custom one")
        if not (math.isfinite(amount) and amount > 0):
            raise ValueError(f"resource {name!r} needs a positive, finite amount, not {amount}")
    return value


class EngineSettings(Strict):
    """How the generator's replicas and engines are sized: set in a run's config, passed to the deployment."""

    num_replicas: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int = Field(64, ge=1)
    enforce_eager: bool = True  # CUDA graphs / torch.compile add minutes of start-up for little gain here
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    # vLLM's CPU backend takes ~92% of RAM for its KV cache when this is unset; ignored on GPUs.
    kv_cache_memory_bytes: int | None = Field(None, ge=2**20)
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    # Custom Ray resources each replica needs: puts replicas on the nodes that advertise them (`ray start
    # --resources`, a KubeRay group's rayStartParams), e.g. {"spin_generate": 1}.
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        return custom_resources(value)


class GeneratorArgs(EngineSettings):
    """Arguments of `build_generator_app`, from Python, a Serve config file or the control plane."""

    # `serve run module:builder key=value` passes every value as a string: they are converted, not refused.
    model_config = ConfigDict(strict=False)

    model_path: str = Field(description="Hugging Face checkpoint: a local folder or a pyarrow.fs URI (copied locally).")
    model_version: int = Field(
        0, ge=-1, description="k: the model iteration k starts from (0: the SFT model); -1: a baseline."
    )
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    max_model_len: int = Field(1024, ge=8)
    seed: int = 0
    served_model_name: str = Field(
        "spin",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The run's name: the engine metrics' model_name label, and the stem of the OpenAI model ids.",
    )
    max_ongoing_requests: int = Field(64, ge=1)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the replica process.")


class GenerateRequest(Strict):
    """A batch of prompts, given as token ids so the caller's chat template is the only one in play."""

    prompt_token_ids: list[list[int]] = Field(min_length=1)
    max_tokens: list[int]
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seeds: list[int] | None = None
    n: int = Field(1, ge=1, le=64, description="Samples per prompt.")
    token_logps: bool = Field(
        False, description="Return each sampled token's log-prob under the serving model (before temperature/top-p)."
    )

    @model_validator(mode="after")
    def _aligned(self) -> GenerateRequest:
        n = len(self.prompt_token_ids)
        if len(self.max_tokens) != n or (self.seeds is not None and len(self.seeds) != n):
            raise ValueError("max_tokens and seeds must give one value per prompt")
        if any(not ids for ids in self.prompt_token_ids):
            raise ValueError("every prompt needs at least one token")
        if any(m < 1 for m in self.max_tokens):
            raise ValueError("max_tokens must be >= 1 for every prompt")
        return self


def openai_model_ids(name: str, version: int, best: bool = False) -> list[str]:
    """The OpenAI model ids of model `version` of run `name`: the one naming its iteration, `<name>:best` when it is
    the run's best so far on the validation split, then the run's name alone, which always means what the run's
    generator serves now."""
    which = {0: "sft", -1: "baseline"}.get(version, f"iter{version - 1}")  # version k+1 is iteration k's output
    return [f"{name}:{which}", *([f"{name}:best"] if best else []), name]


class Completion(Strict):
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length", "abort"]
    token_logps: list[float] | None = None  # one per token id, when the request asked for them
    # The engine's weight-version label of each span of the completion's tokens (vLLM's own record of which
    # weights sampled them): one entry, the served version, unless a weight move cut through the completion.
    weight_versions: list[str] = []


class GenerateResponse(Strict):
    completions: list[Completion]  # n per prompt, in the request's order
    model_version: int

    def produced_by(self, version: int) -> bool:
        """Whether every completion was sampled by model `version` alone, by the replica's word and the engine's."""
        label = [str(version)]
        return self.model_version == version and all(c.weight_versions == label for c in self.completions)

    def sampled_with(self) -> list[str]:
        """Every weight-version label the engine reported for these completions."""
        return sorted({v for c in self.completions for v in c.weight_versions})


class GeneratorInfo(Strict):
    model_path: str
    model_version: int
    replica_id: str
    engine_started_at: float  # time.time() when this replica's engine was built
    weight_version: str = ""  # the engine's own label of the weights it samples with ("" in older records)
    model_ids: list[str] = []  # what its OpenAI routes answer to
    best: bool = False  # whether it serves the run's best model so far (on validation)


class WeightsUpdate(Strict):
    """The Serve `user_config` that moves a running generator to new weights."""

    model_path: str
    model_version: int = Field(ge=-1)
    best: bool = False  # the run's best model so far on validation: its OpenAI routes also answer to `<name>:best`
