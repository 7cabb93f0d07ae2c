"""Locations: the one way a path or URI is normalised, opened and copied to a local folder.

A location is a URI only when it starts with a scheme (`s3://bucket/x`, `file:///data`); anything else is a
local path, made absolute with `~` expanded and `..` and symlinks resolved. Every process (the control plane
checking a location, a job reading it, a replica loading a checkpoint) goes through `filesystem`, so what is
checked is what is opened.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

MARKER = "_SUCCESS"  # a folder counts as written only once this file exists in it
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    return bool(_SCHEME.match(location))


def absolute(location: str) -> str:
    """The normal form of a location: a URI as given (a `file://` URI as its path), else an absolute path.

    A URI is refused when it holds what object stores and local filesystems read differently (`..` or `.`
    segments, empty segments, percent-escapes): such a location cannot be resolved to what will be opened.
    """
    if "\x00" in location or any(ord(c) < 32 for c in location):
        raise ValueError(f"location {location!r} holds a control character")
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        if scheme.lower() != "file":
            authority, _, path = rest.rstrip("/").partition("/")  # s3://bucket/key/..., or mock:///key/...
            segments = path.split("/") if path else []
            if "%" in rest or authority in (".", "..") or any(s in ("", ".", "..") for s in segments):
                raise ValueError(
                    f"location {location!r}: a URI may not hold '.', '..' or empty segments or %-escapes, "
                    "which stores resolve differently"
                )
            return f"{scheme.lower()}://{rest.rstrip('/')}"
        location = rest
    return os.path.realpath(os.path.expanduser(location))


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `location`, and the path within it."""
    normal = absolute(location)
    if not is_uri(normal):
        return pafs.LocalFileSystem(), normal
    fs, path = pafs.FileSystem.from_uri(normal)
    return fs, str(path)


def local_copy(location: str, cache_root: str | None = None) -> str:
    """A local folder holding the folder at `location`: the path itself when local, else a cached download.

    vLLM and transformers load checkpoints from local folders; this lets a run's models live on S3.
    """
    fs, path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    root = Path(cache_root or os.environ.get("SPIN_CACHE_DIR") or Path(tempfile.gettempdir()) / "spin-cache")
    target = root / hashlib.sha1(location.encode()).hexdigest()[:16]
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


def read_text(location: str) -> str:
    """The text of a local file or of any pyarrow.fs URI."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return bytes(f.read()).decode()


def is_file(location: str) -> bool:
    fs, path = filesystem(location)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)


def copy_folder(local_dir: str, location: str) -> None:
    """Copy a local folder to `location` (a local path or a URI), replacing what is there."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
