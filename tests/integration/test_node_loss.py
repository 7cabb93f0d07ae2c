"""An iteration on several Ray nodes survives losing one: worker nodes on this machine (tests/integration/nodes.py)
host the generator replica and the Train workers, placed there by custom resources, and the node holding one of
them is killed mid-stage. Nothing finished is redone and no pair is lost or doubled."""

import os
import shutil
import threading
import time

import pyarrow.compute as pc
import pytest

from jobs.storage import RunStorage
from tests.integration.nodes import LocalNodes, actor_nodes

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]
GENERATE, TRAIN = "spin_generate", "spin_train"


@pytest.fixture(scope="module")
def nodes(ray_cluster):
    """Two nodes that can host the generator and three that can host a Train worker (the run uses two)."""
    local = LocalNodes()
    for name in ("gen-a", "gen-b"):
        local.add(name, num_cpus=2, resources={GENERATE: 1})
    for name in ("train-a", "train-b", "train-c"):
        local.add(name, num_cpus=1, resources={TRAIN: 1})
    yield local
    local.close()


def placed(cfg, tmp_path, name, train=None, **generator):
    """`cfg` in a fresh folder, its generator and Train workers confined to the worker nodes."""
    g = cfg.generator.model_copy(update={"resources": {GENERATE: 1.0}, **generator})
    t = cfg.train.model_copy(update={"resources_per_worker": {TRAIN: 1.0}, **(train or {})})
    return cfg.model_copy(update={"storage_uri": str(tmp_path / "storage"), "name": name, "generator": g, "train": t})


def run_in_thread(cfg, k):
    from jobs.iteration import run_iteration

    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(metrics=run_iteration(cfg, k)), daemon=True)
    runner.start()
    return runner, outcome


def watch(storage, k, runner, timeout_s=900):
    """The iteration's status.json, polled until the iteration ends."""
    deadline, path = time.monotonic() + timeout_s, storage.status(k)
    while runner.is_alive() and time.monotonic() < deadline:
        yield storage.read_json(path) if os.path.exists(path) else {}
        time.sleep(0.2)


def test_losing_a_train_workers_node_restarts_the_group_on_the_others(iteration, nodes, tmp_path):
    from jobs.iteration.context import generator_app_name
    from services.generator.client import stop_serving

    undisturbed_cfg, undisturbed, _ = iteration
    cfg = placed(undisturbed_cfg, tmp_path, "train-node-loss")
    source, target = RunStorage(undisturbed_cfg.storage_uri), RunStorage(cfg.storage_uri)
    target.claim(cfg.identity, cfg.fingerprint())  # the pairs of the undisturbed run: only training runs here
    for folder in (source.generations(0), source.pairs(0), source.eval_prompts()):
        shutil.copytree(folder, folder.replace(source.root, target.root))
    done_before = {p: target.marker(p) for p in (target.generations(0), target.pairs(0))}

    runner, outcome = run_in_thread(cfg, 0)
    killed = lost_at = recovered_s = dead_s = None
    for status in watch(target, 0, runner):
        completed = status.get("completed") or 0
        if killed is None and status.get("stage") == "train" and 5 <= completed <= 14:  # checkpoints every 4
            workers = actor_nodes("RayTrainWorker")
            assert len(workers) == 2 and all(nodes.name_of(n).startswith("train-") for n in workers)
            killed, lost_at, started = nodes.name_of(workers[0]), completed, time.monotonic()
            dead_s = nodes.kill(killed)
        elif killed and recovered_s is None and status.get("stage") == "train" and completed > lost_at:
            recovered_s = time.monotonic() - started
    runner.join(timeout=60)
    stop_serving(generator_app_name(cfg))
    assert killed is not None, "training ended before a node could be killed: the test proved nothing"
    train, expected = outcome["metrics"].train, undisturbed.train
    print(
        f"\ntrain node {killed} lost at step {lost_at}: dead after {dead_s:.1f}s, past step {lost_at} again "
        f"after {recovered_s or float('nan'):.1f}s; resumed at {train.resumed_at_steps}"
    )
    assert train.resumed_at_steps and all(4 <= s <= lost_at and s % 4 == 0 for s in train.resumed_at_steps)
    assert train.pairs == expected.pairs == 40 and train.steps == expected.steps == 20
    assert [h.step for h in train.history] == list(range(1, 21))
    assert target.is_complete(target.model(0))
    assert {p: target.marker(p) for p in done_before} == done_before  # generate and score not redone


def test_losing_the_generators_node_brings_the_replica_back_on_the_weights_it_served(
    iteration, nodes, tiny_model_dir, tmp_path
):
    """The replica is first deployed on other weights (the untrained tiny model) and moved in place to the SFT
    model by the iteration, so a replica that came back on its deployment's arguments rather than its last
    user_config would answer differently from the undisturbed run."""
    from jobs.iteration.context import IterationContext, generator_app_name, generator_args
    from services.generator.client import generator_info, serve_model, stop_serving

    undisturbed_cfg, _, _ = iteration
    # One caller asking for two prompts at a time: the stage lasts long enough to lose the node mid-way. Two
    # training steps: only the publish after training matters here.
    cfg = placed(undisturbed_cfg, tmp_path, "generator-node-loss", {"max_steps": 2}, callers=1, prompts_per_request=2)
    app = generator_app_name(cfg)
    serve_model(generator_args(IterationContext.create(cfg, 0)), app, tiny_model_dir, version=0)
    storage = RunStorage(cfg.storage_uri)
    runner, outcome = run_in_thread(cfg, 0)
    killed = lost_at = dead_s = generate_s = None
    for status in watch(storage, 0, runner):
        if killed is None and status.get("stage") == "generate" and (status.get("completed") or 0) >= 4:
            (replica_node,) = actor_nodes("ServeReplica:" + app)
            killed, lost_at, started = nodes.name_of(replica_node), status["completed"], time.monotonic()
            dead_s = nodes.kill(killed)
        elif killed and generate_s is None and storage.is_complete(storage.generations(0)):
            generate_s = time.monotonic() - started
    runner.join(timeout=60)
    assert killed is not None, "generation ended before its node could be killed: the test proved nothing"
    metrics, info = outcome["metrics"], generator_info(app)
    (replica_node,) = actor_nodes("ServeReplica:" + app)
    stop_serving(app)
    print(
        f"\ngenerator node {killed} lost after {lost_at} prompts: dead after {dead_s:.1f}s, generate ended "
        f"{generate_s or float('nan'):.1f}s after the loss ({metrics.stage_seconds['generate']:.1f}s in all)"
    )
    assert nodes.name_of(replica_node) != killed
    assert info is not None and info.model_version == 1  # publish moved the replacement replica in place too
    mine = storage.read_table(storage.generations(0))
    source = RunStorage(undisturbed_cfg.storage_uri)
    theirs = source.read_table(source.generations(0))
    assert mine.num_rows == theirs.num_rows == metrics.generate.rows == source.marker(source.generations(0))["rows"]
    assert pc.count_distinct(mine.column("prompt_id")).as_py() == mine.num_rows  # one record per prompt
    answers = [dict(zip(t["prompt_id"].to_pylist(), t["generated"].to_pylist(), strict=True)) for t in (mine, theirs)]
    assert answers[0] == answers[1], "the replacement replica answered with other weights"
