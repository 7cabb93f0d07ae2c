"""A headless run that fails after its generator is up: it joins the Ray head already running (as after
`spin server`), says in one line what went wrong and that retrying cannot help, and leaves no generator behind."""

import os
import subprocess
import sys

import pytest
import yaml

from jobs.config import SpinConfig
from jobs.iteration.context import generator_app_name
from tests.factories import tiny_run_config
from tests.integration.conftest import TEST, VALIDATION

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def test_a_pattern_that_finds_no_answer_fails_the_run_and_releases_the_generator(
    ray_cluster, sft_model_dir, dataset, tmp_path
):
    from ray import serve

    root, _ = dataset
    body = tiny_run_config(
        "no-answer",
        str(tmp_path / "storage"),
        sft_model_dir,
        str(root),
        data={"validation_prompts": VALIDATION, "test_prompts": TEST, "bad_rows": "skip"},
        eval={"task": "answer_match", "answer_pattern": r"#### (-?\d+)", "max_new_tokens": 8},
        prompts_per_iteration=8,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(body))
    # RAY_ADDRESS unset: the job finds the head the test session started, rather than starting one of its own.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"SPIN_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "jobs", "run", str(path)], capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 3, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ValueError: eval.answer_pattern '#### (-?\\\\d+)' finds no answer in any of the")
    assert "[spin] final error: retrying cannot help" in done.stderr
    assert "When connecting to an existing cluster" not in done.stderr
    assert generator_app_name(SpinConfig.model_validate(body)) not in serve.status().applications
