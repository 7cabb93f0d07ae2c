"""Keeping storage and data locations inside the roots the operator allows."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable


def _normalise(location: str) -> str:
    if "://" in location:
        scheme, rest = location.split("://", 1)
        if scheme == "file":
            return os.path.realpath(rest)
        return f"{scheme.lower()}://{posixpath.normpath(rest)}".rstrip("/")
    return os.path.realpath(location)


def is_within(location: str, roots: Iterable[str]) -> bool:
    """Whether `location` (a local path or URI) lies inside one of `roots`, after resolving `..` and symlinks."""
    if "\x00" in location:
        return False
    target = _normalise(location)
    for root in roots:
        base = _normalise(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return True
    return False
