"""The end-to-end bench's rows across prompt counts (the smoke run measures one count only)."""

import pytest

from tests.bench.bench_e2e import rows


def measured(wall_s: float, peak_mb: float) -> dict:
    return {
        "iteration": {"wall_s": wall_s, "peak_memory_mb": peak_mb},
        "bare_generation": {"seconds": 2.0, "startup_s": 1.0},
        "bare_training": {"score_seconds": 1.0, "seconds": 2.0},
    }


def test_growth_is_read_against_the_smallest_count():
    table = {(r.case, r.metric): r for r in rows({"8": measured(12.0, 100.0), "32": measured(24.0, 150.0)})}
    assert table[("8 prompts", "wall time")].ratio == pytest.approx(12.0 / 6.0)
    assert table[("32 prompts", "wall time")].ratio == pytest.approx(24.0 / 6.0)
    assert table[("32 prompts", "time growth / prompt growth")].value == pytest.approx((24.0 / 12.0) / 4)
    assert table[("32 prompts", "peak memory / at 8")].value == pytest.approx(1.5)
    assert ("8 prompts", "time growth / prompt growth") not in table


def test_the_breakdown_lists_each_stage_then_its_parts_as_shares_of_the_wall_time():
    result = measured(20.0, 100.0)
    result["iteration"] |= {
        "stage_seconds": {"generate": 10.0, "train": 8.0},
        "stage_parts": {"train/workers_ready_at": 5.0, "train/load": 2.0, "generate/serve": 4.0, "generate/commit": 0},
    }
    breakdown = [(r.metric, r.value, r.peer, r.ratio) for r in rows({"8": result})][1:-1]  # between wall time, memory
    assert breakdown == [
        ("generate", 10.0, "wall time", 0.5),
        ("  generate/serve", 4.0, "wall time", 0.2),
        ("  generate/commit", 0.0, "wall time", None),
        ("train", 8.0, "wall time", 0.4),
        ("  train/workers_ready_at", 5.0, None, None),  # a milestone: not a share to add up
        ("  train/load", 2.0, "wall time", 0.1),
    ]


def test_the_next_iteration_is_read_against_the_same_bare_stages_with_its_own_breakdown():
    result = measured(20.0, 100.0)
    result["iteration"]["next"] = {"wall_s": 9.0, "stage_seconds": {"generate": 3.0}, "stage_parts": {}}
    table = {(r.case, r.metric): r for r in rows({"8": result})}
    assert table[("8 prompts, next iteration", "wall time")].ratio == pytest.approx(9.0 / 6.0)
    assert table[("8 prompts, next iteration", "generate")].ratio == pytest.approx(3.0 / 9.0)
    assert ("8 prompts", "generate") not in table  # the first iteration's breakdown stays its own
