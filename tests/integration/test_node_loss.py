"""An iteration's stages on several Ray nodes survive losing one: worker nodes on this machine
(tests/integration/nodes.py) host the generator replica and the Train workers, placed there by custom resources,
and the node holding one of them is killed mid-stage. Nothing finished is redone and no pair is lost or doubled."""

import time

import pyarrow.compute as pc
import pytest

from jobs.storage import RunStorage
from tests.integration.nodes import LocalNodes, actor_nodes
from tests.integration.stages import registered_checkpoint, stage_in_thread, train_on_the_pairs_of, watch

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


def placed(cfg, tmp_path, name, **generator):
    """`cfg` in a fresh folder, its generator and Train workers confined to the worker nodes."""
    g = cfg.generator.model_copy(update={"resources": {GENERATE: 1.0}, **generator})
    t = cfg.train.model_copy(update={"resources_per_worker": {TRAIN: 1.0}})
    return cfg.model_copy(update={"storage_uri": str(tmp_path / "storage"), "name": name, "generator": g, "train": t})


def test_losing_a_train_workers_node_restarts_the_group_on_the_others(iteration, nodes, tmp_path):
    """Only the train stage runs, on the undisturbed run's pairs: the stages around it do not touch its workers."""
    undisturbed_cfg, undisturbed, _ = iteration
    cfg = placed(undisturbed_cfg, tmp_path, "train-node-loss")
    target, runner, outcome = train_on_the_pairs_of(undisturbed_cfg, cfg)
    killed = lost_at = recovered_s = dead_s = None
    for status in watch(target, 0, runner):
        completed = status.get("completed") or 0
        training = status.get("stage") == "train"
        if killed is None and training and 5 <= completed <= 18 and registered_checkpoint(target, 0):  # every 4
            workers = actor_nodes("RayTrainWorker")
            assert len(workers) == 2 and all(nodes.name_of(n).startswith("train-") for n in workers)
            killed, lost_at, started = nodes.name_of(workers[0]), completed, time.monotonic()
            dead_s = nodes.kill(killed)
        elif killed and recovered_s is None and training and completed > lost_at:
            recovered_s = time.monotonic() - started
    runner.join(timeout=60)
    assert killed is not None, "training ended before a node could be killed: the test proved nothing"
    train, expected = outcome["train"], undisturbed.train
    print(
        f"\ntrain node {killed} lost at step {lost_at}: dead after {dead_s:.1f}s, past step {lost_at} again "
        f"after {recovered_s or float('nan'):.1f}s; resumed at {train.resumed_at_steps}"
    )
    assert train.resumed_at_steps and all(4 <= s <= lost_at and s % 4 == 0 for s in train.resumed_at_steps)
    assert train.pairs == expected.pairs == 40 and train.steps == expected.steps == 20
    assert [h.step for h in train.history] == list(range(1, 21))
    assert target.is_complete(target.model(0))


def test_losing_the_generators_node_brings_the_replica_back_on_the_weights_it_served(
    iteration, nodes, tiny_model_dir, tmp_path
):
    """The replica is first deployed on other weights (the untrained tiny model) and moved in place to the SFT
    model by the generate stage, so a replica that came back on its deployment's arguments rather than its last
    user_config would answer differently from the undisturbed run. Only the generate stage runs, and a publish
    after it: the later stages do not touch the generator until then."""
    from jobs.iteration.context import IterationContext, generator_app_name, generator_args
    from jobs.iteration.generate import run_generate
    from services.generator.client import generator_info, serve_model, stop_serving

    undisturbed_cfg, undisturbed, _ = iteration
    # One caller asking for two prompts at a time: the stage lasts long enough to lose the node mid-way.
    cfg = placed(undisturbed_cfg, tmp_path, "generator-node-loss", callers=1, prompts_per_request=2)
    app, ctx = generator_app_name(cfg), IterationContext.create(cfg, 0)
    serve_model(generator_args(ctx), app, tiny_model_dir, version=0)

    def generate(stage):
        ctx.serve(ctx.model_uri, version=0)
        return run_generate(ctx, stage)

    runner, outcome = stage_in_thread(ctx, "generate", generate)
    killed = lost_at = dead_s = generate_s = None
    for status in watch(ctx.storage, 0, runner):
        if killed is None and status.get("stage") == "generate" and (status.get("completed") or 0) >= 4:
            (replica_node,) = actor_nodes("ServeReplica:" + app)
            killed, lost_at, started = nodes.name_of(replica_node), status["completed"], time.monotonic()
            dead_s = nodes.kill(killed)
    runner.join(timeout=60)
    generate_s = time.monotonic() - started if killed else None
    assert killed is not None, "generation ended before its node could be killed: the test proved nothing"
    ctx.serve(tiny_model_dir, version=1)  # what publish does after training
    info = generator_info(app)
    (replica_node,) = actor_nodes("ServeReplica:" + app)
    stop_serving(app)
    print(
        f"\ngenerator node {killed} lost after {lost_at} prompts: dead after {dead_s:.1f}s, generate ended "
        f"{generate_s:.1f}s after the loss"
    )
    assert nodes.name_of(replica_node) != killed
    assert info is not None and (info.model_path, info.model_version) == (tiny_model_dir, 1)  # moved in place
    storage, source = ctx.storage, RunStorage(undisturbed_cfg.storage_uri)
    mine, theirs = storage.read_table(storage.generations(0)), source.read_table(source.generations(0))
    generation = outcome["generate"]
    assert mine.num_rows == theirs.num_rows == generation.rows == undisturbed.generate.rows
    assert pc.count_distinct(mine.column("prompt_id")).as_py() == mine.num_rows  # one record per prompt
    answers = [dict(zip(t["prompt_id"].to_pylist(), t["generated"].to_pylist(), strict=True)) for t in (mine, theirs)]
    assert answers[0] == answers[1], "the replacement replica answered with other weights"
