from jobs.iteration.train import RELAYED, step_progress
from jobs.spin.names import METRIC_NAMES
from tests.factories import step_metrics


def test_a_workers_step_event_reaches_the_progress_sinks_with_its_names_unchanged():
    event = step_metrics(loss=0.6, **{"rewards/accuracies": 0.75}) | {
        "step": 3,
        "total_steps": 20,
        "epoch": 0,
        "learning_rate": 1e-4,
        "tokens_per_s": 900.0,
        "tokens": 1800,
        "grad_norm": 0.4,
    }
    step, total, info = step_progress(event)
    assert (step, total) == (3, 20)
    assert set(info) == {*METRIC_NAMES, "tokens_per_s", "tokens"} == set(RELAYED)
    assert info["rewards/accuracies"] == 0.75 and info["loss"] == 0.6 and info["tokens_per_s"] == 900.0
    assert info["tokens"] == 1800  # what the train-token counter adds


def test_the_relay_forwards_steps_and_parts_even_those_put_as_the_group_ends(ray_cluster):
    from jobs.iteration.train import relayed
    from jobs.progress import Progress

    progress = Progress()
    with progress.stage("train") as stage, relayed(stage) as events:
        events.put({"reached": "workers_ready", "at": stage.started_at + 0.25})  # on the worker's clock
        events.put({"step": 1, "total_steps": 2, "loss": 0.5})
        # Many at once as the group ends, faster than the relay takes them one by one: none may be lost.
        events.put_nowait_batch([{"part": "checkpoints", "seconds": 0.5}] * 300)
    assert progress.parts["train/checkpoints"] == 150.0
    assert progress.parts["train/workers_ready_at"] == 0.25
    assert (stage.completed, stage.total) == (1, 2)
