from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.config import SpinConfig, apply_overrides

CONFIGS = sorted((Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))
MINIMAL = {"name": "r1", "storage_uri": "/tmp/x", "model": {"path": "/m"}, "data": {"path": "/d.jsonl"}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = SpinConfig.from_yaml(path)
    for k in range(cfg.num_iterations):
        cfg.iteration(k)


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"demo_cpu.yaml", "zephyr_paper.yaml"}


def test_defaults_are_the_papers():
    cfg = SpinConfig.model_validate(MINIMAL)
    t = cfg.train
    assert (t.loss_type, t.beta, t.learning_rate, t.optimizer, t.lr_scheduler) == (
        "sigmoid",
        0.1,
        5e-7,
        "rmsprop",
        "linear",
    )
    assert (t.warmup_ratio, t.global_batch_size, t.max_prompt_length, t.max_length, t.epochs) == (0.1, 64, 512, 1024, 2)
    assert t.precision == "bf16" and cfg.prompts_per_iteration == 50_000 and cfg.mix_previous
    lrs = [cfg.iteration(k).train.learning_rate for k in range(cfg.num_iterations)]
    assert lrs == [5e-7, 5e-7, 1e-7, 1e-7]


def test_per_iteration_overrides():
    cfg = SpinConfig.model_validate(
        MINIMAL | {"iterations": [{"prompts": 10}, {"beta": 5.0, "learning_rate": 1e-7, "mix_previous": False}]}
    )
    assert cfg.iteration(0).prompts == 10 and cfg.iteration(0).train.beta == 0.1
    one = cfg.iteration(1)
    assert (one.train.beta, one.train.learning_rate, one.mix_previous, one.prompts) == (5.0, 1e-7, False, 50_000)
    # The resolved train config is the run's with the overrides: one beta, one lr per iteration.
    assert one.train.model_dump() == cfg.train.model_dump() | {"beta": 5.0, "learning_rate": 1e-7}
    with pytest.raises(IndexError, match="iteration 2 is outside this run's 2 iterations"):
        cfg.iteration(2)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"train": {"lossy": 1}}, "Extra inputs are not permitted"),
        ({"train": {"loss_type": "kto"}}, "'sppo_hard' or 'bco_pair'"),
        ({"train": {"beta": 0}}, "greater than 0"),
        ({"train": {"global_batch_size": 60}}, "must be a multiple of train.micro_batch_size × train.num_workers"),
        ({"train": {"max_prompt_length": 1024}}, "must be below train.max_length"),
        ({"train": {"use_gpu": False}}, "train.precision 'bf16' needs train.use_gpu"),
        ({"data": {"path": None}}, "data.path is required"),
        ({"name": "bad name!"}, "String should match pattern"),
        ({"train": {"resources_per_worker": {"GPU": 1}}}, "resource 'GPU' is set by Ray itself"),
        ({"generator": {"resources": {"spin_generate": 0}}}, "resource 'spin_generate' needs a positive"),
        ({"generator": {"resources": {"node:10.0.0.1": 1}}}, "set by Ray itself"),
    ],
)
def test_invalid_configs_name_the_field(patch, message):
    data = apply_overrides(MINIMAL, [])
    for section, value in patch.items():
        data[section] = data.get(section, {}) | value if isinstance(value, dict) else value
    with pytest.raises(ValidationError, match=message):
        SpinConfig.model_validate(data)


def test_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: r\nstorage_uri: /s\nmodel: {path: /m}\ndata: {path: /d}\n")
    cfg = SpinConfig.from_yaml(
        path, ["train.beta=0.5", "iterations=[{}, {}]", "train.use_gpu=false", "train.precision=fp32"]
    )
    assert cfg.train.beta == 0.5 and cfg.num_iterations == 2 and not cfg.train.use_gpu
    with pytest.raises(ValueError, match="not of the form section.field=value"):
        SpinConfig.from_yaml(path, ["train.beta"])
    assert SpinConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_the_demo_runs_a_shipped_config_by_default():
    from jobs.demo.driver import DEMO_CONFIG

    assert DEMO_CONFIG in CONFIGS
