"""Keeping storage and data locations inside the roots the operator allows."""

from __future__ import annotations

from collections.abc import Iterable

from cluster.files import absolute


def is_within(location: str, roots: Iterable[str]) -> bool:
    """Whether `location` (a local path or URI) lies inside one of `roots`, normalised exactly as the code that
    later opens it normalises it (`..` and symlinks of local paths resolved); a location that cannot be resolved
    is outside every root."""
    try:
        target = absolute(location)
    except ValueError:
        return False
    for root in roots:
        if contains(absolute(root), target):
            return True
    return False


def contains(base: str, target: str) -> bool:
    """Whether normalised location `target` is `base` or lies below it."""
    return target == base or target.startswith(base.rstrip("/") + "/")


def overlap(a: str, b: str) -> bool:
    """Whether two normalised locations are one, or one lies inside the other."""
    return contains(a, b) or contains(b, a)
