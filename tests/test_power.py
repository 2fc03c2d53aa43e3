"""The power of the study's tests against binomial calculations written out here, and the bootstrap decision
against the study's own interval."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from unpact_mech.core.stats import bootstrap_mean, paired_difference, wilson
from unpact_mech.findings.power import (
    bootstrap_lower,
    destruction_mde,
    destruction_power,
    power_curve,
    simulate_diffs,
    specific_mde,
    specific_power,
)


def test_one_replicate_decides_as_the_study_does():
    """Row by row, the vectorised lower bound is paired_difference's (the same resamples for the same seed)."""
    diffs = simulate_diffs(9, 0.3, 0.1, 2, 25, seed=4)
    low = bootstrap_lower(diffs, n_boot=10_000, seed=0)
    for row, lo in zip(diffs, low):
        assert lo == pytest.approx(bootstrap_mean(list(row), seed=0)[1], abs=1e-12)
        pd_ = paired_difference(list(row + 0.0), [0.0] * len(row))
        assert lo == pytest.approx(pd_["diff_low"], abs=1e-12)


def _exact_low(values: list[Fraction], idx: np.ndarray, q: float = 0.025) -> Fraction:
    """The percentile bootstrap's lower end in exact arithmetic: resample means as fractions, then numpy's linear
    quantile (h = (N - 1) q between the two order statistics around it)."""
    means = sorted(sum((values[j] for j in row), Fraction(0)) / len(row) for row in idx)
    h = (len(means) - 1) * Fraction(q)
    j = math.floor(h)
    return means[j] + (h - j) * (means[min(j + 1, len(means) - 1)] - means[j])


def test_an_interval_end_at_an_exact_tie_is_zero_not_a_rounding_above_it():
    """Differences in thirds (3 random draws): (1 - 1/3 - 1/3 - 1/3) / 4 is 0, and float sums make it 1.4e-17.
    The lower end is exactly 0 here, so the study's rule (low > 0) must not call it KeyToken-specific."""
    values = [Fraction(1), Fraction(-1, 3), Fraction(1), Fraction(1)]
    idx = np.random.default_rng(0).integers(0, 4, (10_000, 4))
    exact = _exact_low(values, idx)
    assert exact == 0
    _, low, _ = bootstrap_mean([float(v) for v in values], seed=0)
    assert low == 0.0
    assert paired_difference([1.0, 0.0, 1.0, 1.0], [0.0, 1 / 3, 0.0, 0.0])["diff_low"] == 0.0


def test_simulated_power_in_thirds_counts_ties_as_not_above_zero():
    """With 3 draws the differences are thirds; each replicate's decision equals the exact-arithmetic one."""
    n, reps, n_boot = 6, 30, 400
    diffs = simulate_diffs(n, 0.2, 0.3, 3, reps, seed=2)
    idx = np.random.default_rng(2).integers(0, n, (n_boot, n))
    exact = [_exact_low([Fraction(round(3 * x), 3) for x in row], idx) > 0 for row in diffs]
    assert specific_power(n, 0.2, p_random=0.3, n_draws=3, reps=reps, seed=2, n_boot=n_boot) == sum(exact) / reps


def _binom_tail(n: int, p: float, k0: int) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(k0, n + 1))


@pytest.mark.parametrize("n,p", [(6, 0.4), (20, 0.25)])
def test_power_with_no_random_recovery_is_a_binomial_tail(n, p):
    """With p_random = 0 every difference is K_i in {0, 1}. The 2.5% bootstrap quantile of k ones in n is above 0
    exactly when fewer than 2.5% of resamples hold no one: P(no one) = (1 - k/n)^n < 0.025. So the power is
    P(Binomial(n, p) >= k*), k* the smallest such k (n = 6: k* = 3; n = 20: k* = 4, each far from the edge)."""
    k_star = next(k for k in range(n + 1) if (1 - k / n) ** n < 0.025)
    assert k_star == {6: 3, 20: 4}[n]
    expect = _binom_tail(n, p, k_star)
    reps = 4000
    got = specific_power(n, p, p_random=0.0, n_draws=2, reps=reps, seed=1, n_boot=10_000)
    assert abs(got - expect) < 4 * math.sqrt(expect * (1 - expect) / reps), (got, expect)


def test_destruction_power_is_the_wilson_rule_summed_over_the_binomial():
    for n, p in ((12, 0.1), (24, 0.05), (8, 0.3)):
        brute = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1) if wilson(k, n).low > 0)
        assert destruction_power(n, p) == pytest.approx(brute)
        assert destruction_power(n, destruction_mde(n)) == pytest.approx(0.8)
    assert round(destruction_mde(12), 3) == 0.126


def test_mde_falls_with_n_and_sits_at_the_power_target():
    m6, m12, m48 = (specific_mde(n, reps=300) for n in (6, 12, 48))
    assert m6 > m12 > m48 > 0
    assert specific_power(12, m12, reps=300) >= 0.8 > specific_power(12, m12 - 0.01, reps=300)
    t = power_curve([6, 24], [0.1, 0.5], reps=200)
    assert list(t.n) == [6, 6, 24, 24] and (t.power_low <= t.power).all() and (t.power <= t.power_high).all()
    assert t.set_index(["n", "effect"]).power[(24, 0.5)] > t.set_index(["n", "effect"]).power[(6, 0.1)]
    assert math.isnan(specific_mde(2, p_random=0.5, reps=100))  # n = 2 can never reach 80%
    with pytest.raises(ValueError, match="p_random \\+ effect"):
        specific_power(6, 0.9, p_random=0.2)
    assert np.all(simulate_diffs(5, 0.0, 0.0, 2, 3, 0) == 0)
