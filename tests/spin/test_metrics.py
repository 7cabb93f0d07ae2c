import math

import pytest
import torch

from jobs.spin.loss import spin_loss
from jobs.spin.metrics import answer_match, metrics_from_sums, pair_metric_sums, response_nll
from jobs.spin.names import METRIC_NAMES


def test_response_nll_is_per_token():
    """−(−6 − 4) / (3 + 2) = 2: every token counts once, whatever the response it belongs to."""
    assert response_nll(torch.tensor([-6.0, -4.0]), torch.tensor([3.0, 2.0])).item() == pytest.approx(2.0)


def test_metric_sums_reduce_to_means_by_hand():
    """Two pairs, β 0.5. Pair 1: gains real +2, generated −2 (margin 4); pair 2: real −1, generated +1 (margin −2).

    rewards/real = 0.5·(2, −1) → mean 0.25; rewards/margins = 0.5·(4, −2) → mean 0.5; accuracy = 1/2.
    """
    policy_real, policy_gen = torch.tensor([-8.0, -11.0]), torch.tensor([-12.0, -9.0])
    out = spin_loss(policy_real, policy_gen, torch.tensor([-10.0, -10.0]), torch.tensor([-10.0, -10.0]), beta=0.5)
    sums = pair_metric_sums(out, policy_real, policy_gen, beta=0.5)
    assert sums.shape == (len(METRIC_NAMES) + 1,) and sums.dtype == torch.float64 and sums[-1] == 2
    # Sums of two batches reduce like the sums of one batch of both (an all-reduce over ranks).
    m = metrics_from_sums(sums + sums)
    assert m["rewards/real"] == pytest.approx(0.25) and m["rewards/generated"] == pytest.approx(-0.25)
    assert m["rewards/margins"] == pytest.approx(0.5) and m["margin"] == pytest.approx(1.0)
    assert m["rewards/accuracies"] == 0.5 and m["gain/real"] == pytest.approx(0.5)
    assert m["logps/real"] == pytest.approx(-9.5) and m["logps/generated"] == pytest.approx(-10.5)
    assert m["loss"] == pytest.approx((math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2)
    with pytest.raises(ValueError, match="count of 0"):
        metrics_from_sums(torch.zeros(len(METRIC_NAMES) + 1, dtype=torch.float64))


def test_answer_match_compares_the_captured_answers():
    reals = ["2 + 2 = 4. The answer is 4.", "no answer here", "The answer is 5."]
    answers = ["The answer is 4.", "The answer is 9.", "It is five."]
    assert answer_match(answers, reals, r"The answer is (-?\d+)") == (0.5, 2)
