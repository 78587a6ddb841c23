"""Fits on synthetic data with known exponents; paired differences and summaries by hand."""

import numpy as np
import pytest

from elm_jax.errors import ConfigError
from elm_jax.explore.stats import bootstrap_interval, fit_power_law, paired_difference, summarize

COMPUTE = np.logspace(6, 10, 9)


def test_pure_power_law_is_recovered_exactly():
    fit = fit_power_law(COMPUTE, 3.0 * COMPUTE ** -0.05, samples=200)
    assert pytest.approx(3.0, rel=1e-9) == fit.A and fit.alpha == pytest.approx(0.05, rel=1e-9)
    assert fit.E == 0
    low, high = fit.intervals["alpha"]
    assert low == pytest.approx(0.05, rel=1e-9) and high == pytest.approx(0.05, rel=1e-9)


def test_saturating_power_law_is_recovered_exactly():
    fit = fit_power_law(COMPUTE, 400 * COMPUTE ** -0.3 + 1.7, saturating=True, samples=50)
    assert (fit.A, fit.alpha, fit.E) == pytest.approx((400, 0.3, 1.7), rel=1e-5)


def test_noisy_fit_intervals_cover_the_true_exponent():
    """1 % multiplicative noise: the estimate moves, the 95 % intervals still hold the truth."""
    rng = np.random.default_rng(0)
    loss = (400 * COMPUTE ** -0.3 + 1.7) * np.exp(rng.normal(0, 0.01, COMPUTE.size))
    fit = fit_power_law(COMPUTE, loss, saturating=True, samples=300)
    for name, truth in (("alpha", 0.3), ("E", 1.7)):
        low, high = fit.intervals[name]
        assert low < truth < high, (name, low, high)
    assert fit.alpha != pytest.approx(0.3, rel=1e-6)  # the noise did move the point estimate
    assert fit.predict(COMPUTE) == pytest.approx(loss, rel=0.03)


def test_fit_refuses_too_few_budgets():
    with pytest.raises(ConfigError, match="at least 3 distinct positive budgets"):
        fit_power_law([1e6, 1e6, 1e7], [3.0, 2.9, 2.5], saturating=True)


def test_paired_difference_by_hand():
    reference = {0: 4.0, 1: 4.2, 2: 4.1}
    treatment = {0: 3.9, 1: 4.0, 2: 4.1, 3: 9.9}  # seed 3 has no partner and is ignored
    diff = paired_difference(reference, treatment, samples=2000)
    assert diff.n == 3 and diff.mean == pytest.approx(-0.1)
    # resampled means of (-0.1, -0.2, 0.0) lie between the smallest and largest difference
    assert -0.2 - 1e-12 <= diff.low < diff.mean < diff.high <= 0.0 + 1e-12


def test_bootstrap_of_identical_values_has_zero_width():
    assert bootstrap_interval([0.25] * 4, samples=100) == pytest.approx((0.25, 0.25))


def test_summary_matches_numpy():
    values = [3.1, 3.3, 3.2, 3.6]
    summary = summarize(values)
    assert (summary.n, summary.mean, summary.std) == (4, pytest.approx(np.mean(values)),
                                                      pytest.approx(np.std(values, ddof=1)))
    assert summarize([2.0]).std == 0
