"""Confinement, as a property: a location is accepted only if the path a job would open lies inside a root."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.files import filesystem, is_uri
from services.control_plane.confine import is_within, overlap

SEGMENTS = ["..", ".", "a", "b", "inside", "out", "x://y", "~", "~unknownuser", "%2e%2e", "", "link", "s3:"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """<base>/root (allowed) with root/inside, and root/link → <base>/outside (a symlink pointing out)."""
    base = tmp_path_factory.mktemp("confine")
    (base / "root" / "inside").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "root" / "link").symlink_to(base / "outside")
    return base


def opened(location: str) -> str | None:
    """The local path a job would open for `location` (None for a remote URI or an unresolvable location)."""
    try:
        fs, path = filesystem(location)
    except (ValueError, OSError):
        return None
    return None if is_uri(location) and not location.startswith("file://") else os.path.realpath(path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6),
    prefix=st.sampled_from(["", "file://", "s3://b/"]),
)
def test_accepted_locations_open_inside_a_root(tree, parts, prefix):
    root = str(tree / "root")
    location = prefix + (root if prefix != "s3://b/" else "root") + "/" + "/".join(parts)
    if not is_within(location, [root]):
        return
    path = opened(location)
    assert path is not None, location
    assert path == os.path.realpath(root) or path.startswith(os.path.realpath(root) + "/"), (location, path)


def test_the_holes_found_are_closed(tree):
    root = str(tree / "root")
    assert not is_within(f"{root}/../../outside/x://y", [root])  # '://' inside a local path is not a URI
    assert not is_within(f"{root}/link/x", [root])  # a symlink inside the root pointing out
    assert not is_within("s3://bucket/runs/../other", ["s3://bucket/runs"])
    assert not is_within("s3://bucket/runs/%2e%2e/other", ["s3://bucket/runs"])
    assert not is_within("~unknownuser/x", [root])  # no home lookup, no error: just outside
    assert is_within(f"{root}/inside/./run", [root]) and is_within("s3://bucket/runs/a", ["s3://bucket/runs/"])


def test_overlapping_folders():
    assert overlap("/r/a", "/r/a") and overlap("/r/a", "/r/a/iter_0") and overlap("/r/a/x", "/r/a")
    assert not overlap("/r/a", "/r/ab") and not overlap("/r/a", "/r/b")
