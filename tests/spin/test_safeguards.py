import math

import pytest
import torch

from jobs.spin import GainGuard, IterationScores, StoppingRule, real_nll, should_stop, spin_loss, spin_objective


def test_guard_fires_when_the_real_gain_turns_negative():
    """A crafted trace: the real-response gain rises, then falls below zero at step 300."""
    trace = [(100, 1.32), (200, 0.51), (300, -0.40), (400, -1.32), (500, -1.87)]
    stop = GainGuard(action="stop")
    actions = [stop.observe(step, gain) for step, gain in trace]
    assert actions == ["none", "none", "stop", "stop", "stop"] and stop.fired_at[0] == 300

    patient = GainGuard(action="lower_lr", patience=2)
    assert [patient.observe(s, g) for s, g in trace] == ["none", "none", "none", "lower_lr", "none"]
    assert patient.fired_at == [400]

    assert [GainGuard(action="none").observe(s, g) for s, g in trace] == ["none"] * 5
    recovering = GainGuard(action="stop", patience=2)
    assert [recovering.observe(s, g) for s, g in [(1, -0.1), (2, 0.2), (3, -0.1), (4, 0.3)]] == ["none"] * 4


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


def test_objective_defaults_to_the_spin_loss_and_adds_the_safeguards():
    pr, pg, rr, rg = (torch.tensor([v], dtype=torch.float64) for v in (-10.0, -20.0, -12.0, -15.0))
    nr, ng = torch.tensor([5.0], dtype=torch.float64), torch.tensor([10.0], dtype=torch.float64)
    plain = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1)
    assert torch.equal(plain.losses, spin_loss(pr, pg, rr, rg, beta=0.1).losses)
    # Length-normalised: margin = (−10/5 + 12/5) − (−20/10 + 15/10) = 0.4 + 0.5 = 0.9.
    normalised = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1, length_normalize=True)
    assert normalised.margin.item() == pytest.approx(0.9)
    assert normalised.losses.item() == pytest.approx(math.log1p(math.exp(-0.09)))
    # NLL term: α · 10/5 = 0.5 · 2 = 1.0 added.
    anchored = spin_objective(pr, pg, rr, rg, nr, ng, beta=0.1, real_nll_weight=0.5)
    assert anchored.losses.item() == pytest.approx(plain.losses.item() + 1.0)


def test_nll_term_pulls_the_real_response_up_even_at_zero_margin():
    pr = torch.tensor([-10.0], requires_grad=True)
    spin_objective(
        pr,
        torch.tensor([-10.0]),
        torch.tensor([-10.0]),
        torch.tensor([-10.0]),
        torch.tensor([4.0]),
        torch.tensor([4.0]),
        beta=0.1,
        real_nll_weight=1.0,
    ).losses.sum().backward()
    assert pr.grad.item() == pytest.approx(-0.05 - 0.25)  # −β/2 from the SPIN term, −1/|real| from the NLL


def test_real_nll_is_per_token():
    assert real_nll(torch.tensor([-6.0, -4.0]), torch.tensor([3.0, 2.0])) == pytest.approx(2.0)
