import pytest

from jobs.storage import CONTINUED_SFT, RunStorage
from tests.factories import iteration_metrics


@pytest.fixture
def stored_run(tmp_path):
    storage = RunStorage(str(tmp_path))
    runs = [
        iteration_metrics(
            0,
            task_metric=0.62,
            accuracy=0.81,
            margin=0.9,
            nll=0.10,
            losses=[0.693, 0.60, 0.55],
            baseline={
                "model_version": 0,
                "held_out_prompts": 10,
                "task_metric": 0.55,
                "generated_tokens": 19.0,
                "nll/real": 0.12,
            },
        ),
        iteration_metrics(1, task_metric=0.66, accuracy=0.58, margin=0.05, nll=0.09, losses=[0.693, 0.66]),
    ]
    for m in runs:
        storage.write_json(storage.metrics(m.iteration), m.model_dump(mode="json"))
    storage.write_json(
        storage.baseline(CONTINUED_SFT, "metrics.json"),
        {
            "model_version": -1,
            "held_out_prompts": 10,
            "task_metric": 0.60,
            "generated_tokens": 19.5,
            "nll/real": 0.11,
            "train": {"steps": 5, "batch_size": 16, "examples": 200, "learning_rate": 1e-4, "final_loss": 0.3},
        },
    )
    return tmp_path
