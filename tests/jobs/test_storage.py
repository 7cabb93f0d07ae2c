import json

import pytest

from cluster.files import MARKER
from jobs.storage import RunStorage


def test_commit_moves_into_place_and_marks_last(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    final = storage.pairs(0)
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
    storage.write_json(storage.metrics(0), {"loss": 0.5})
    assert storage.read_json(storage.metrics(0)) == {"loss": 0.5}
    assert json.loads((tmp_path / "run" / "out" / MARKER).read_text()) == {"k": 1}
    assert not list((tmp_path / "run" / "iter_0").glob("*.tmp-*"))


def test_the_layout_names_every_path_of_a_run_folder(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    root = str(tmp_path / "run")
    assert storage.uri == storage.root == root
    assert [
        storage.config(),
        storage.status(2),
        storage.generations(2),
        storage.pairs(2),
        storage.train(2),
        storage.best(2, 50),
        storage.model(2),
        storage.metrics(2),
        storage.baseline("continued_sft", "model"),
        storage.stopped(),
        storage.report(),
    ] == [
        f"{root}/config.yaml",
        f"{root}/iter_2/status.json",
        f"{root}/iter_2/generations",
        f"{root}/iter_2/pairs",
        f"{root}/iter_2/train",
        f"{root}/iter_2/train/best/step_50",
        f"{root}/iter_2/model",
        f"{root}/iter_2/metrics.json",
        f"{root}/baselines/continued_sft/model",
        f"{root}/stopped.json",
        f"{root}/report",
    ]


def test_every_path_is_in_the_module_docstring_and_the_readme():
    """The docstring's table and the README's outputs table list the same folder layout as the methods."""
    from pathlib import Path

    import jobs.storage

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for entry in ("config.yaml", "status.json", "generations/", "pairs/", "train/", "best/step_<n>", "model/"):
        assert entry in jobs.storage.__doc__ and entry in readme, entry
    for entry in ("metrics.json", "baselines/", "stopped.json", "report/"):
        assert entry in jobs.storage.__doc__ and entry in readme, entry


def test_remote_storage_keeps_its_scheme():
    storage = RunStorage("mock:///bucket/run")
    assert storage.uri_of(storage.model(0)).startswith("mock://")


def test_a_folder_is_one_runs_with_one_set_of_settings_and_its_baselines_join_it(tmp_path):
    from jobs.storage import FolderInUse

    storage = RunStorage(str(tmp_path / "run"))
    with pytest.raises(FolderInUse, match="holds no run's outputs"):
        storage.claim(None, "f1")  # a baseline needs a run to join
    storage.claim("cp-1", "f1")
    storage.claim("cp-1", "f1")  # the same run resuming
    with pytest.raises(FolderInUse, match="holds the outputs of run 'cp-1'.*this is run 'headless:x'"):
        storage.claim("headless:x", "f1")
    with pytest.raises(FolderInUse, match=r"\(settings f1\).*\(settings f2\)"):
        storage.claim("cp-1", "f2")
    storage.claim(None, "f1")  # a baseline run by hand joins the run that owns the folder, whoever launched it
    with pytest.raises(FolderInUse, match=r"run 'cp-1' \(settings f1\); this is a baseline \(settings f2\)"):
        storage.claim(None, "f2")


def test_the_continued_sft_grid_is_not_a_setting_of_the_run():
    from jobs.config import SpinConfig

    cfg = SpinConfig.from_yaml("jobs/configs/demo_cpu.yaml")
    regridded = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"continued_sft_learning_rates": [1e-5]})})
    assert regridded.fingerprint() == cfg.fingerprint()
    assert cfg.model_copy(update={"run_id": "cp-1"}).fingerprint() == cfg.fingerprint()
    assert cfg.model_copy(update={"prompts_per_iteration": 1}).fingerprint() != cfg.fingerprint()
