import pytest

from jobs.spin.schedule import StepPlan, lr_multiplier, warmup_steps


def test_step_plan_counts_equal_split_rows_and_partial_groups():
    plan = StepPlan(num_pairs=37, world_size=2, micro_batch_size=4, accumulation_steps=2, epochs=2)
    assert plan.rows_per_worker == 18  # one pair dropped by the equal split
    assert plan.micro_batches_per_epoch == 5  # 4 + 4 + 4 + 4 + 2
    assert plan.steps_per_epoch == 3  # (mb0, mb1), (mb2, mb3), (mb4)
    assert plan.total_steps == 6
    assert [plan.ends_step(i) for i in range(5)] == [False, True, False, True, True]
    assert [plan.pairs_in_step(i) for i in range(5)] == [8, 8, 8, 8, 2]
    assert plan.step_of(1, 4) == 5
    with pytest.raises(ValueError, match="1 pairs cannot feed 2 workers"):
        StepPlan(num_pairs=1, world_size=2, micro_batch_size=1, accumulation_steps=1, epochs=1)


def test_lr_multiplier_warms_up_then_decays_to_zero():
    f = lr_multiplier(total_steps=10, warmup_steps=warmup_steps(10, 0.2))
    assert [round(f(s), 4) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert lr_multiplier(10, 0, "constant")(7) == 1.0
    assert warmup_steps(10, 0.0) == 0 and warmup_steps(11, 0.1) == 2  # rounded up


def test_a_step_budget_repeats_the_pairs_as_often_as_it_needs():
    plan = StepPlan(num_pairs=37, world_size=2, micro_batch_size=4, accumulation_steps=2, epochs=2, max_steps=7)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs_to_run) == (3, 7, 3)  # 3 + 3 + 1 steps
    assert StepPlan(37, 2, 4, 2, epochs=2).epochs_to_run == 2


def test_cosine_multiplier_falls_from_the_peak_to_zero():
    """After warm-up, m(s) = ½(1 + cos(π (s − w)/(T − w))): 1 at the end of warm-up, ½ halfway, 0 at T."""
    f = lr_multiplier(total_steps=10, warmup_steps=2, kind="cosine")
    assert f(1) == 1.0 and f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(2, 10))
