"""One stage of an iteration run alone in a thread, and what a test disturbing it watches."""

import json
import os
import shutil
import threading
import time
from pathlib import Path


def stage_in_thread(ctx, name, work):
    """One stage of the iteration alone, as its controller runs it (status.json included): `work(stage)`."""
    from jobs.progress import Progress, StatusSink

    outcome, progress = {}, Progress(StatusSink(ctx.storage, ctx.k, every_s=0.5))

    def run():
        with progress.stage(name) as stage:
            outcome[name] = work(stage)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    return runner, outcome


def watch(storage, k, runner, timeout_s=900):
    """The iteration's status.json, polled until the stage ends."""
    deadline, path = time.monotonic() + timeout_s, storage.status(k)
    while runner.is_alive() and time.monotonic() < deadline:
        yield storage.read_json(path) if os.path.exists(path) else {}
        time.sleep(0.2)


def registered_checkpoint(storage, k) -> bool:
    """Whether Ray Train's controller has registered a checkpoint of the iteration's training: a worker's report
    reaches the controller only when it next polls the workers, so a worker lost before that poll takes the
    checkpoint with it and the group restarts from the beginning (as a real cluster would)."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    path = os.path.join(storage.train(k), CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
    return os.path.exists(path) and json.loads(Path(path).read_text()).get("latest_checkpoint_result") is not None


def train_on_the_pairs_of(undisturbed_cfg, cfg):
    """The train stage of `cfg`'s iteration 0 alone, on the generations and pairs the undisturbed run made."""
    from jobs.iteration.context import IterationContext
    from jobs.iteration.train import run_train
    from jobs.storage import RunStorage

    ctx = IterationContext.create(cfg, 0)
    source, target = RunStorage(undisturbed_cfg.storage_uri), ctx.storage
    for folder in (source.generations(0), source.pairs(0), source.eval_prompts()):
        shutil.copytree(folder, folder.replace(source.root, target.root))
    runner, outcome = stage_in_thread(ctx, "train", lambda stage: run_train(ctx, stage))
    return target, runner, outcome
