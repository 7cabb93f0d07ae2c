"""Keeping storage and data locations inside the roots the operator allows."""

from __future__ import annotations

from collections.abc import Iterable

from cluster.files import absolute


def is_within(location: str, roots: Iterable[str]) -> bool:
    """Whether `location` (a local path or URI) lies inside one of `roots`, normalised exactly as the code that
    later opens it normalises it (`..` and symlinks of local paths resolved)."""
    if "\x00" in location:
        return False
    target = absolute(location)
    for root in roots:
        base = absolute(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return True
    return False
