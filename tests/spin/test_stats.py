import math

import pytest

from jobs.spin.stats import Interval, mcnemar_exact, paired_bootstrap, verdict


def test_bootstrap_of_a_constant_difference_is_that_difference():
    out = paired_bootstrap([3.0, 4.0, 5.0], [1.0, 2.0, 3.0], resamples=500)
    assert (out.difference, out.low, out.high) == (2.0, 2.0, 2.0)


def test_bootstrap_of_two_pairs_by_hand():
    """d = (0, 1): a resample's mean is 0, ½ or 1 with probabilities ¼, ½, ¼; 2.5% and 97.5% fall on 0 and 1."""
    out = paired_bootstrap([1.0, 1.0], [1.0, 0.0], resamples=20_000)
    assert out.difference == 0.5 and (out.low, out.high) == (0.0, 1.0)


def test_bootstrap_matches_the_exact_resampling_distribution():
    """d = (1, 0, 0, −1, 1): the 5^5 equally likely resamples, enumerated, against 100,000 drawn ones."""
    import itertools

    d = [1, 0, 0, -1, 1]
    means = sorted(sum(d[i] for i in idx) / 5 for idx in itertools.product(range(5), repeat=5))
    exact_low, exact_high = means[int(0.025 * len(means))], means[int(0.975 * len(means))]
    out = paired_bootstrap(d, [0] * 5, resamples=100_000, seed=1)
    assert out.difference == pytest.approx(0.2)
    assert (out.low, out.high) == pytest.approx((exact_low, exact_high), abs=1e-9)


def test_bootstrap_is_seeded_and_refuses_unpaired_series():
    a, b = [0.1, 0.5, 0.9, 0.3], [0.2, 0.2, 0.8, 0.4]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [
        (1, 5, 2 * (1 + 6) / 2**6),  # n = 6, P(X ≤ 1) = (C(6,0) + C(6,1)) / 64
        (0, 10, 2 / 2**10),
        (3, 3, 1.0),  # 2 · P(X ≤ 3) > 1 for n = 6
        (0, 0, 1.0),  # no discordant pair: nothing to tell
        (12, 30, 2 * sum(math.comb(42, i) for i in range(13)) / 2**42),
    ],
)
def test_mcnemar_exact_by_hand(only_a, only_b, p):
    # Concordant items (both right, both wrong) must not change p.
    a = [True] * only_a + [False] * only_b + [True] * 7 + [False] * 4
    b = [False] * only_a + [True] * only_b + [True] * 7 + [False] * 4
    assert mcnemar_exact(a, b) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)


def test_the_verdict_flips_exactly_where_the_interval_crosses_zero():
    assert verdict(Interval(0.02, 1e-12, 0.04)) == "better"
    assert verdict(Interval(0.02, 0.0, 0.04)) == "no detectable difference"
    assert verdict(Interval(-0.01, -0.03, 0.0)) == "no detectable difference"
    assert verdict(Interval(-0.02, -0.04, -1e-12)) == "worse"
    # Where lower is better (a negative log-likelihood), the same interval reads the other way.
    assert verdict(Interval(-0.02, -0.04, -1e-12), higher_is_better=False) == "better"
    assert verdict(Interval(0.02, 1e-12, 0.04), higher_is_better=False) == "worse"
