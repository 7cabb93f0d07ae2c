import json

import pytest

from jobs.storage import MARKER, RunStorage, local_copy


def test_commit_moves_into_place_and_marks_last(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    final = storage.iteration_path(0, "pairs")
    staging = storage.staging_path(final)
    (tmp_path / "run" / "iter_0" / staging.rsplit("/", 1)[1] / "part-0.parquet").write_bytes(b"x")
    assert not storage.is_complete(final)
    storage.commit(staging, final, {"rows": 3})
    assert storage.is_complete(final) and storage.marker(final) == {"rows": 3}
    assert sorted(p.name for p in (tmp_path / "run" / "iter_0").iterdir()) == ["pairs"]


def test_an_interrupted_write_never_looks_complete_and_is_replaced(tmp_path):
    storage = RunStorage(str(tmp_path))
    final = storage.path("model")
    # A crash after the move but before the marker: the folder exists, unmarked.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "half.safetensors").write_bytes(b"partial")
    leftover = storage.staging_path(final)
    assert not storage.is_complete(final)
    staging = storage.staging_path(final)
    (tmp_path / staging.rsplit("/", 1)[1] / "model.safetensors").write_bytes(b"whole")
    storage.commit(staging, final)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [MARKER, "model.safetensors"]
    storage.discard(final)
    assert not storage.exists(final) and not storage.exists(leftover)


def test_upload_dir_and_json(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    storage = RunStorage(str(tmp_path / "run"))
    storage.upload_dir(src, storage.path("out"), {"k": 1})
    assert (tmp_path / "run" / "out" / "a.txt").read_text() == "hello"
    storage.write_json(storage.path("iter_0", "metrics.json"), {"loss": 0.5})
    assert storage.read_json(storage.path("iter_0", "metrics.json")) == {"loss": 0.5}
    assert json.loads((tmp_path / "run" / "out" / MARKER).read_text()) == {"k": 1}
    assert not list((tmp_path / "run" / "iter_0").glob("*.tmp-*"))


def test_local_copy_of_a_file_uri(tmp_path):
    assert local_copy(str(tmp_path)) == str(tmp_path)
    assert local_copy(f"file://{tmp_path}") == str(tmp_path)
    with pytest.raises(Exception, match="nope"):
        local_copy("nope://bucket/x")
