"""A run's storage: every path of a run folder, and atomic commits of what the stages write.

    <storage_uri>/config.yaml                    config()             the run's config
    <storage_uri>/run.json                       identity()           who owns the folder: run id, settings digest
    <storage_uri>/eval_prompts/                  eval_prompts()       the validation and test prompts (Parquet)
    <storage_uri>/iter_<k>/status.json           status(k)            live progress of iteration k (stage, units done)
    <storage_uri>/iter_<k>/generations/          generations(k)       generation records before scoring (Parquet)
    <storage_uri>/iter_<k>/pairs/                pairs(k)             pair records with reference log-probs (Parquet)
    <storage_uri>/iter_<k>/carried/              carried(k)           iteration k−1's pairs, rescored by model k
    <storage_uri>/iter_<k>/train/                train(k)             Ray Train's resumable checkpoints
    <storage_uri>/iter_<k>/train/best/step_<n>/  best(k, n)           the best evaluated weights, while training
    <storage_uri>/iter_<k>/model/                model(k)             the model iteration k produced (Hugging Face)
    <storage_uri>/iter_<k>/evaluation/           evaluation(k)        model k+1's answer to every eval prompt (Parquet)
    <storage_uri>/iter_<k>/metrics.json          metrics(k)           what iteration k measured (jobs/metrics.py)
    <storage_uri>/baselines/<name>/              baseline(name)       a baseline's evaluation/ and metrics.json:
                                                                      sft (the starting model) and continued_sft,
                                                                      whose candidates/lr_<lr>/ hold model/, evaluation/
    <storage_uri>/stopped.json                   stopped()            why the stopping rule ended the run
    <storage_uri>/report/                        report()             report.json and the plots of `spin report`

A folder counts as written only once its `_SUCCESS` marker exists. Contents are written to a staging
folder, moved into place, and marked last, so a crash at any point leaves nothing that looks complete.
Works for local paths and any pyarrow.fs URI (s3://, gs://, ...).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cluster.files import MARKER, absolute, filesystem, is_uri, local_copy

SFT = "sft"  # the starting model, evaluated as a baseline
CONTINUED_SFT = "continued_sft"  # the baseline SPIN is compared against


class FolderInUse(RuntimeError):
    """The storage folder holds another run's outputs (or outputs of other settings)."""


class RunStorage:
    def __init__(self, uri: str):
        self._scheme = absolute(uri).split("://", 1)[0] if is_uri(absolute(uri)) else None
        self.fs, self.root = filesystem(uri)
        self.uri = self.uri_of(self.root)

    # --- the layout ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def config(self) -> str:
        return self.path("config.yaml")

    def identity(self) -> str:
        return self.path("run.json")

    def claim(self, run: str | None, fingerprint: str) -> None:
        """Make the folder `run`'s, or check it already is, with the same settings: outputs of another run, or of
        other settings, are never taken for this run's. `run` None: whichever run made them, with these settings
        (what reads a run's outputs and adds to them: its baselines)."""
        if run is None and not self.exists(self.identity()):
            raise FolderInUse(f"{self.uri} holds no run's outputs (no {self.identity().rsplit('/', 1)[-1]})")
        if self.exists(self.identity()):
            owner = self.read_json(self.identity())
            if run not in (None, owner.get("run")) or owner.get("fingerprint") != fingerprint:
                this = "a baseline" if run is None else f"run {run!r}"
                raise FolderInUse(
                    f"{self.uri} holds the outputs of run {owner.get('run')!r} (settings {owner.get('fingerprint')}); "
                    f"this is {this} (settings {fingerprint}). To resume that run, launch it with its own "
                    "config; to start over, choose a fresh storage_uri or delete the folder"
                )
            return
        if self.exists(self.root) and self.fs.get_file_info(pafs.FileSelector(self.root)):
            leftovers = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root))]
            if set(leftovers) - {"config.yaml"}:
                raise FolderInUse(
                    f"{self.uri} already holds outputs ({', '.join(sorted(leftovers)[:5])}) that no run owns; "
                    "choose a fresh storage_uri or delete the folder"
                )
        self.write_json(self.identity(), {"run": run, "fingerprint": fingerprint})

    def eval_prompts(self) -> str:
        return self.path("eval_prompts")

    def iteration(self, k: int, *parts: str) -> str:
        return self.path(f"iter_{k}", *parts)

    def status(self, k: int) -> str:
        return self.iteration(k, "status.json")

    def generations(self, k: int) -> str:
        return self.iteration(k, "generations")

    def pairs(self, k: int) -> str:
        return self.iteration(k, "pairs")

    def carried(self, k: int) -> str:
        return self.iteration(k, "carried")

    def evaluation(self, k: int) -> str:
        return self.iteration(k, "evaluation")

    def train(self, k: int) -> str:
        return self.iteration(k, "train")

    def best(self, k: int, step: int) -> str:
        return self.iteration(k, "train", "best", f"step_{step}")

    def model(self, k: int) -> str:
        return self.iteration(k, "model")

    def metrics(self, k: int) -> str:
        return self.iteration(k, "metrics.json")

    def baseline(self, name: str, *parts: str) -> str:
        return self.path("baselines", name, *parts)

    def stopped(self) -> str:
        return self.path("stopped.json")

    def report(self) -> str:
        return self.path("report")

    def uri_of(self, path: str) -> str:
        """The URI form of a path of this filesystem (a plain path for local storage)."""
        return path if self._scheme is None else f"{self._scheme}://{path}"

    # --- atomic folders -----------------------------------------------------------------------------
    def is_complete(self, path: str) -> bool:
        return bool(self.fs.get_file_info(f"{path}/{MARKER}").type == pafs.FileType.File)

    def marker(self, path: str) -> dict[str, Any]:
        with self.fs.open_input_stream(f"{path}/{MARKER}") as f:
            return dict(json.loads(f.read().decode()))

    def staging_path(self, path: str) -> str:
        """A fresh sibling folder to write `path`'s contents into before committing it."""
        staging = f"{path}.staging-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(staging, recursive=True)
        return staging

    def commit(self, staging: str, path: str, meta: dict[str, Any] | None = None) -> None:
        """Move a staging folder into place and mark it complete. Any earlier, unmarked `path` is removed."""
        if self.exists(path):
            self.fs.delete_dir(path)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(staging, path)  # a rename: atomic on one filesystem
        else:
            pafs.copy_files(staging, path, source_filesystem=self.fs, destination_filesystem=self.fs)
            self.fs.delete_dir(staging)
        self._write_bytes(f"{path}/{MARKER}", json.dumps(meta or {}, indent=1).encode())

    def discard(self, path: str) -> None:
        """Remove `path` and any staging leftovers beside it."""
        parent, name = path.rsplit("/", 1)
        if self.fs.get_file_info(parent).type != pafs.FileType.Directory:
            return
        for info in self.fs.get_file_info(pafs.FileSelector(parent)):
            if info.base_name == name or info.base_name.startswith(f"{name}.staging-"):
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir(info.path)
                else:
                    self.fs.delete_file(info.path)

    def upload_dir(self, local_dir: str | Path, path: str, meta: dict[str, Any] | None = None) -> None:
        """Copy a local folder to `path` atomically."""
        staging = self.staging_path(path)
        pafs.copy_files(
            str(local_dir), staging, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )
        self.commit(staging, path, meta)

    # --- tables ------------------------------------------------------------------------------------
    def write_table(self, path: str, table: pa.Table, meta: dict[str, Any] | None = None) -> None:
        """A small table as a committed folder of one Parquet part."""
        staging = self.staging_path(path)
        with self.fs.open_output_stream(f"{staging}/part-00000.parquet") as f:
            pq.write_table(table, f)
        self.commit(staging, path, {"rows": table.num_rows, **(meta or {})})

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """A committed folder of Parquet parts as one table (`columns` only, if given); a folder without its
        marker is refused."""
        if not self.is_complete(path):
            raise FileNotFoundError(f"{self.uri_of(path)} is missing or incomplete (no {MARKER} marker)")
        parts = sorted(
            info.path for info in self.fs.get_file_info(pafs.FileSelector(path)) if info.base_name.endswith(".parquet")
        )
        tables = [pq.read_table(p, filesystem=self.fs, columns=columns) for p in parts]
        return pa.concat_tables(tables) if parts else pa.table({})

    # --- small files --------------------------------------------------------------------------------
    def write_json(self, path: str, obj: Any) -> None:
        """Write a JSON file atomically (temporary name, then rename; a single PUT on object stores)."""
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file atomically: readers see the old content or the new, never a part."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            self._write_bytes(tmp, data)
            os.replace(tmp, path)
        else:
            self._write_bytes(path, data)

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_text(path))

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return bytes(f.read()).decode()

    def local_path(self, path: str) -> str:
        """A local folder holding the storage folder `path` (itself for local storage, else a download)."""
        return local_copy(self.uri_of(path))

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)
