"""A training worker killed mid-iteration: Ray Train restarts the worker group, which resumes from the last
checkpoint, and the iteration ends exactly as an undisturbed one does."""

import os
import shutil
import signal
import threading
import time

import pytest

from jobs.storage import RunStorage

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def train_workers():
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def test_killing_a_training_worker_resumes_from_its_checkpoint(iteration, tmp_path):
    from jobs.iteration import run_iteration
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    undisturbed_cfg, undisturbed, _ = iteration
    cfg = undisturbed_cfg.model_copy(update={"storage_uri": str(tmp_path / "storage"), "name": "fault"})
    # Same pairs as the undisturbed run: only training is repeated.
    source, target = RunStorage(undisturbed_cfg.storage_uri), RunStorage(cfg.storage_uri)
    target.claim(cfg.identity, cfg.fingerprint())  # as if this run had made them: the same settings
    for folder in (source.generations(0), source.pairs(0), source.eval_prompts()):
        shutil.copytree(folder, folder.replace(source.root, target.root))

    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(metrics=run_iteration(cfg, 0)), daemon=True)
    runner.start()
    status_path = target.status(0)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        status = target.read_json(status_path) if os.path.exists(status_path) else {}
        # Past the first checkpoint (every 4 steps) and well before the end (20 steps).
        if status.get("stage") == "train" and 5 <= (status.get("completed") or 0) <= 14:
            victim = train_workers()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed = status["completed"]
        time.sleep(0.2)
    runner.join(timeout=900)
    stop_serving(generator_app_name(cfg))
    assert killed is not None, "training ended before a worker could be killed: the test proved nothing"
    metrics = outcome["metrics"]

    train, expected = metrics.train, undisturbed.train
    assert train.resumed_at_steps and all(4 <= s <= killed and s % 4 == 0 for s in train.resumed_at_steps)
    assert train.pairs == expected.pairs == 40
    assert train.steps == expected.steps == 20
    assert [h.step for h in train.history] == list(range(1, 21))
    assert target.is_complete(target.model(0))
