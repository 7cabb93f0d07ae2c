from typing import get_args

from jobs.iteration.monitoring import EXPORTED, STAGES, TRAIN_GAUGES
from jobs.iteration.train import RELAYED
from jobs.metrics import StageName


def test_every_training_gauge_reads_a_metric_the_relay_forwards():
    """The exporter renames SPIN's names to Prometheus names; it must find each name in the relayed events."""
    assert set(TRAIN_GAUGES) <= set(RELAYED)
    names = [name for name, _ in TRAIN_GAUGES.values()]
    assert len(set(names)) == len(names) and all(n.startswith("spin_train_") and n.islower() for n in names)
    assert all(desc.isascii() for _, desc in TRAIN_GAUGES.values())  # Ray's metrics agent encodes ASCII


def test_stage_gauges_cover_every_stage_of_the_metrics_file():
    assert STAGES == get_args(StageName)
    assert {"ray_spin_stage", "ray_spin_train_loss", "ray_spin_pairs_done"} <= EXPORTED
