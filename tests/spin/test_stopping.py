from jobs.spin.stopping import IterationScores, StoppingRule, should_stop


def test_stopping_rule_fires_at_the_fixed_point_with_its_reason():
    rule = StoppingRule(accuracy_band=0.05, margin_tolerance=0.1, patience=0)
    history = [IterationScores(0.91, 2.5), IterationScores(0.74, 0.9), IterationScores(0.53, -0.04)]
    assert not should_stop(history[:1], rule).stop
    assert not should_stop(history[:2], rule).stop
    decision = should_stop(history, rule)
    assert decision.stop and decision.reason.startswith("converged: held-out reward accuracy 0.530")
    # Accuracy near 0.5 but a large margin is not convergence.
    assert not should_stop([IterationScores(0.52, 0.8)], rule).stop


def test_stopping_rule_fires_when_the_task_metric_stalls_and_not_before():
    rule = StoppingRule(patience=2, accuracy_band=0.0, margin_tolerance=0.0)
    scores = [0.60, 0.62, 0.61, 0.62]
    history = [IterationScores(0.8, 1.0, s) for s in scores]
    decisions = [should_stop(history[: i + 1], rule, baseline_task_metric=0.55) for i in range(4)]
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert "has not improved for 2 iteration(s): best 0.6200 before, 0.6200 since" in decisions[3].reason
    # Never before min_iterations, and not without a task metric.
    assert not should_stop(history[:1], StoppingRule(patience=1, min_iterations=2), 0.9).stop
    assert not should_stop([IterationScores(0.8, 1.0, None)] * 3, rule).stop
