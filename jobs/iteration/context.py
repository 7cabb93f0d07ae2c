"""What every stage of iteration k needs to know: the config, the resolved settings, where things live, and the
run's generator."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.files import is_file, local_copy
from jobs.chat import pad_id
from jobs.config import IterationPlan, SpinConfig, TrainConfig
from jobs.hf import load_tokenizer
from jobs.report.results import best_model, load_run
from jobs.storage import RunStorage
from services.generator.client import serve_model
from services.generator.schemas import EngineSettings, GeneratorArgs

if TYPE_CHECKING:
    from jobs.iteration.tracking import MLflowTracker


@dataclass(frozen=True)
class IterationContext:
    cfg: SpinConfig
    iteration: IterationPlan
    storage: RunStorage
    model_uri: str  # the model iteration k starts from: its policy at step 0 and its frozen reference
    model_dir: str  # a local folder holding it

    @classmethod
    def create(cls, cfg: SpinConfig, k: int, *, of_any_run: bool = False) -> IterationContext:
        """`of_any_run`: for a baseline, which joins the run in the folder whoever launched it (a config run by
        hand carries no control-plane run id), as long as its settings are the run's."""
        storage = RunStorage(cfg.storage_uri)
        storage.claim(None if of_any_run else cfg.identity, cfg.fingerprint())  # never other runs' or settings'
        model_uri = starting_model_uri(cfg, storage, k)
        return cls(cfg, cfg.iteration(k), storage, model_uri, local_copy(model_uri))

    @property
    def k(self) -> int:
        return self.iteration.index

    @property
    def train(self) -> TrainConfig:
        """The train config of this iteration, its overrides applied."""
        return self.iteration.train

    @property
    def compute_dtype(self) -> str:
        """The dtype the trainer computes in, which the reference scores must share."""
        return "bfloat16" if self.train.precision == "bf16" else "float32"

    @functools.cached_property
    def pad_id(self) -> int:
        return pad_id(load_tokenizer(self.model_dir))

    @functools.cached_property
    def tracker(self) -> MLflowTracker | None:
        """The run's experiment tracker, when its config turns one on."""
        if self.cfg.tracking.backend == "none":
            return None
        from jobs.iteration.tracking import MLflowTracker

        return MLflowTracker(self.cfg)

    @property
    def generator_app(self) -> str:
        return generator_app_name(self.cfg)

    def serve(self, model_uri: str, version: int) -> float:
        """Make the run's generator serve `model_uri` as model `version`, named `<name>:best` too when it is the
        run's best model so far on validation; returns the seconds it took."""
        best = best_model(load_run(self.storage.uri, with_results=False))
        is_best = best is not None and best.evaluation.model_version == version
        return serve_model(generator_args(self), self.generator_app, model_uri, version, best=is_best)


def generator_app_name(cfg: SpinConfig) -> str:
    return cfg.generator_app


def generator_args(ctx: IterationContext) -> GeneratorArgs:
    g = ctx.cfg.generator
    return GeneratorArgs(
        **g.model_dump(include=set(EngineSettings.model_fields))
        | {
            "model_path": ctx.model_uri,
            "model_version": ctx.k,
            "dtype": ctx.compute_dtype,
            "max_model_len": ctx.train.max_length,
            "seed": ctx.cfg.sampling.seed,
            "served_model_name": ctx.cfg.name,
            "kv_cache_memory_bytes": None if g.num_gpus else g.kv_cache_memory_bytes,
        }
    )


def starting_model_uri(cfg: SpinConfig, storage: RunStorage, k: int) -> str:
    """Iteration 0 starts from the SFT model; iteration k from the model iteration k−1 published."""
    if k == 0:
        if not is_file(f"{cfg.model.path}/config.json"):
            raise FileNotFoundError(f"model.path {cfg.model.path} is not a Hugging Face checkpoint (no config.json)")
        return cfg.model.path
    previous = storage.model(k - 1)
    if not storage.is_complete(previous):
        raise FileNotFoundError(
            f"iteration {k} starts from iteration {k - 1}'s model, which is not published at "
            f"{storage.uri_of(previous)}; run iteration {k - 1} first"
        )
    return storage.uri_of(previous)
