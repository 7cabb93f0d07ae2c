from jobs.spin.guard import GainGuard


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
