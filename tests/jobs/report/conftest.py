import pyarrow as pa
import pytest

from jobs.records import EVAL_RESULT_SCHEMA
from jobs.storage import CONTINUED_SFT, SFT, RunStorage
from tests.factories import evaluation, iteration_metrics

TEST = 20  # test prompts p0..p19; validation prompts v0..v9 are all right for every model


def results(right: int, nll: float) -> pa.Table:
    """Per-prompt results: the first `right` of the 20 test prompts answered right, every real answer at `nll`."""
    ids = [f"v{i}" for i in range(10)] + [f"p{i}" for i in range(TEST)]
    correct = [True] * 10 + [i < right for i in range(TEST)]
    return pa.table(
        {
            "prompt_id": ids,
            "split": ["validation"] * 10 + ["test"] * TEST,
            "answer": ["The answer is 1."] * len(ids),
            "answer_tokens": [8] * len(ids),
            "correct": correct,
            "nll": [nll] * len(ids),
        },
        schema=EVAL_RESULT_SCHEMA,
    )


@pytest.fixture
def stored_run(tmp_path):
    """SFT right on 11 of 20 test prompts, SPIN iterations 0 and 1 on 13 and 14, continued SFT on 12."""
    storage = RunStorage(str(tmp_path))
    sft = evaluation(0, 0.55, 0.12)
    runs = [
        iteration_metrics(0, task_metric=0.65, accuracy=0.81, margin=0.9, nll=0.10, losses=[0.693, 0.6], baseline=sft),
        iteration_metrics(1, task_metric=0.70, accuracy=0.58, margin=0.05, nll=0.09, losses=[0.693, 0.66]),
    ]
    for m, right, nll in zip(runs, (13, 14), (0.10, 0.09), strict=True):
        storage.write_json(storage.metrics(m.iteration), m.model_dump(mode="json"))
        storage.write_table(storage.evaluation(m.iteration), results(right, nll))
    storage.write_table(storage.baseline(SFT, "evaluation"), results(11, 0.12))
    storage.write_table(storage.baseline(CONTINUED_SFT, "evaluation"), results(12, 0.11))
    candidate = {"validation": evaluation(-1, 0.6, 0.11)["validation"], "train_seconds": 3.0, "eval_seconds": 1.0}
    train = {"steps": 5, "batch_size": 16, "examples": 200, "learning_rate": 1e-4, "final_loss": 0.3}
    storage.write_json(
        storage.baseline(CONTINUED_SFT, "metrics.json"),
        evaluation(-1, 0.60, 0.11)
        | {"train": train, "candidates": [candidate | {"learning_rate": 1e-4}, candidate | {"learning_rate": 1e-3}]},
    )
    return tmp_path
