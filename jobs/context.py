"""What every stage of iteration k needs to know: the config, the resolved settings and where things live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.config import ResolvedIteration, SpinConfig
from jobs.storage import RunStorage, local_copy


@dataclass(frozen=True)
class IterationContext:
    cfg: SpinConfig
    iteration: ResolvedIteration
    storage: RunStorage
    model_uri: str  # the model iteration k starts from: its policy at step 0 and its frozen reference
    model_dir: str  # a local folder holding it

    @classmethod
    def create(cls, cfg: SpinConfig, k: int) -> IterationContext:
        storage = RunStorage(cfg.storage_uri)
        model_uri = starting_model_uri(cfg, storage, k)
        return cls(cfg, cfg.iteration(k), storage, model_uri, local_copy(model_uri))

    @property
    def k(self) -> int:
        return self.iteration.index

    def path(self, *parts: str) -> str:
        return self.storage.iteration_path(self.k, *parts)

    @property
    def compute_dtype(self) -> str:
        """The dtype the trainer computes in, which the reference scores must share."""
        return "bfloat16" if self.cfg.train.precision == "bf16" else "float32"


def starting_model_uri(cfg: SpinConfig, storage: RunStorage, k: int) -> str:
    """Iteration 0 starts from the SFT model; iteration k from the model iteration k−1 published."""
    if k == 0:
        if not _is_model(cfg.model.path):
            raise FileNotFoundError(f"model.path {cfg.model.path} is not a Hugging Face checkpoint (no config.json)")
        return cfg.model.path
    previous = storage.iteration_path(k - 1, "model")
    if not storage.is_complete(previous):
        raise FileNotFoundError(
            f"iteration {k} starts from iteration {k - 1}'s model, which is not published at "
            f"{storage.uri_of(previous)}; run iteration {k - 1} first"
        )
    return storage.uri_of(previous)


def _is_model(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).absolute()))
    return bool(fs.get_file_info(f"{path}/config.json").type == pafs.FileType.File)
