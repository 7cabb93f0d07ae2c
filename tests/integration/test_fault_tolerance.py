"""A training worker killed mid-iteration: Ray Train restarts the worker group, which resumes from the last
checkpoint, and training ends exactly as an undisturbed one does."""

import os
import signal

import pytest

from tests.integration.stages import registered_checkpoint, train_on_the_pairs_of, watch

# The first user of the session's `iteration` fixture: its timeout covers building that too.
pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(1800)]


def train_workers():
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def test_killing_a_training_worker_resumes_from_its_checkpoint(iteration, tmp_path):
    """Only the train stage runs, on the undisturbed run's pairs."""
    undisturbed_cfg, undisturbed, _ = iteration
    cfg = undisturbed_cfg.model_copy(update={"storage_uri": str(tmp_path / "storage"), "name": "fault"})
    target, runner, outcome = train_on_the_pairs_of(undisturbed_cfg, cfg)
    killed = None
    for status in watch(target, 0, runner, timeout_s=600):
        # Past a checkpoint Ray Train has registered (every 4 steps) and before the end (20 steps).
        completed = status.get("completed") or 0
        if status.get("stage") == "train" and 5 <= completed <= 18 and registered_checkpoint(target, 0):
            os.kill(train_workers()[0].pid, signal.SIGKILL)
            killed = completed
            break
    runner.join(timeout=900)
    assert killed is not None, "training ended before a worker could be killed: the test proved nothing"

    train, expected = outcome["train"], undisturbed.train
    assert train.resumed_at_steps and all(4 <= s <= killed and s % 4 == 0 for s in train.resumed_at_steps)
    assert train.pairs == expected.pairs == 40
    assert train.steps == expected.steps == 20
    assert [h.step for h in train.history] == list(range(1, 21))
    assert target.is_complete(target.model(0))
