"""A run's storage: the folder layout, atomic commits, and local copies of remote checkpoints.

    <storage_uri>/iter_<k>/generations/   pair records before scoring (Parquet)
    <storage_uri>/iter_<k>/pairs/         pair records with reference log-probs (Parquet)
    <storage_uri>/iter_<k>/train/         Ray Train's resumable checkpoints
    <storage_uri>/iter_<k>/model/         the model iteration k produced (Hugging Face checkpoint)
    <storage_uri>/iter_<k>/metrics.json   what iteration k measured

A folder counts as written only once its `_SUCCESS` marker exists. Contents are written to a staging
folder, moved into place, and marked last, so a crash at any point leaves nothing that looks complete.
Works for local paths and any pyarrow.fs URI (s3://, gs://, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MARKER = "_SUCCESS"


class RunStorage:
    def __init__(self, uri: str):
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri.rstrip("/")
        self.fs, self.root = pafs.FileSystem.from_uri(self.uri)

    # --- layout -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def iteration_path(self, k: int, *parts: str) -> str:
        return self.path(f"iter_{k}", *parts)

    def uri_of(self, path: str) -> str:
        """The URI form of a path of this filesystem (a plain path for local storage)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return path
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{path}"

    # --- atomic folders -----------------------------------------------------------------------------
    def is_complete(self, path: str) -> bool:
        return self.fs.get_file_info(f"{path}/{MARKER}").type == pafs.FileType.File

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

    # --- small files --------------------------------------------------------------------------------
    def write_json(self, path: str, obj: Any) -> None:
        """Write a JSON file atomically (temporary name, then rename; a single PUT on object stores)."""
        data = json.dumps(obj, indent=1, sort_keys=True).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            self._write_bytes(tmp, data)
            os.replace(tmp, path)
        else:
            self._write_bytes(path, data)

    def write_text(self, path: str, text: str) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self._write_bytes(path, text.encode())

    def read_json(self, path: str) -> Any:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def local_path(self, path: str) -> str:
        """A local folder holding the storage folder `path` (itself for local storage, else a download)."""
        return local_copy(self.uri_of(path))

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)


def local_copy(uri: str, cache_root: str | None = None) -> str:
    """A local folder holding the folder at `uri`: the path itself when local, else a cached download.

    vLLM and transformers load checkpoints from local folders; this lets a run's models live on S3.
    """
    if "://" not in uri:
        return uri
    fs, path = pafs.FileSystem.from_uri(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    root = Path(cache_root or os.environ.get("SPIN_CACHE_DIR") or Path(tempfile.gettempdir()) / "spin-cache")
    target = root / hashlib.sha1(uri.encode()).hexdigest()[:16]
    if (target / MARKER).exists():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root))
    pafs.copy_files(path, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    (staging / MARKER).touch()
    try:
        staging.rename(target)
    except OSError:  # another process finished the same download first
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def read_text(uri: str) -> str:
    """The text of a local file or of any pyarrow.fs URI."""
    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).absolute()))
    with fs.open_input_stream(path) as f:
        return bytes(f.read()).decode()
