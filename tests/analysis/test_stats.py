"""stepscope.analysis.stats: every interval is scipy.stats.bootstrap's percentile interval, to
the last bit, whichever of its three uses (compare's ratio of medians, the report's median
whisker, compare's geometric-mean summary) computes it; the one bootstrap draws what scipy
draws."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from stepscope.analysis import stats


def scipy_interval(data, statistic) -> tuple[float, float]:
    """The reference: scipy's own bootstrap with this module's resamples, seed and level."""
    ci = scipy_stats.bootstrap(data, statistic, vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                               confidence_level=stats.CONFIDENCE, method="percentile",
                               rng=np.random.default_rng(stats.SEED)).confidence_interval
    return float(ci.low), float(ci.high)


def median_ratio(b, o, axis=-1):
    return np.median(o, axis=axis) / np.median(b, axis=axis)


@pytest.mark.parametrize(("n_base", "n_other"), [(2, 2), (3, 8), (4, 4), (5, 6), (9, 9), (30, 25)])
def test_the_ratio_of_medians_is_scipys_interval_over_the_sorted_samples(n_base, n_other):
    rng = np.random.default_rng(n_base * 100 + n_other)
    base, other = rng.lognormal(0.0, 0.2, n_base), rng.lognormal(0.3, 0.2, n_other)
    low, high = stats.bootstrap_ratio(base[None, :], other[None, :])
    assert (float(low[0]), float(high[0])) == scipy_interval((np.sort(base), np.sort(other)), median_ratio)


def test_stacked_comparisons_each_get_their_own_interval_whatever_their_order():
    rng = np.random.default_rng(11)
    base, other = rng.lognormal(0.0, 0.3, (5, 7)), rng.lognormal(0.1, 0.3, (5, 7))
    low, high = stats.bootstrap_ratio(base, other)
    for i in range(5):
        assert (low[i], high[i]) == scipy_interval((np.sort(base[i]), np.sort(other[i])), median_ratio)
    # The samples' stored order (an accident of the files) changes nothing.
    shuffled_low, shuffled_high = stats.bootstrap_ratio(rng.permuted(base, axis=-1), rng.permuted(other, axis=-1))
    assert np.array_equal(low, shuffled_low) and np.array_equal(high, shuffled_high)


@pytest.mark.parametrize("n", [2, 3, 5, 6, 17])
def test_the_median_whisker_is_scipys_interval(n):
    values = np.random.default_rng(n).lognormal(2.0, 0.1, n)
    assert stats.median_ci(values.tolist()) == scipy_interval((values,), np.median)


def test_the_geometric_mean_interval_is_scipys_over_the_logs():
    ratios = np.random.default_rng(5).lognormal(0.05, 0.1, 12)
    geomean, low, high = stats.geomean_interval(ratios.tolist())
    log_low, log_high = scipy_interval((np.log(ratios),), np.mean)
    assert geomean == pytest.approx(float(np.exp(np.log(ratios).mean())), rel=1e-15)
    assert (low, high) == (float(np.exp(log_low)), float(np.exp(log_high)))


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_median_positions_give_each_resamples_median(n):
    # Against the plain way: build every resample of the sorted sample, take np.median.
    sample = np.sort(np.random.default_rng(n).normal(size=n))
    positions = stats.median_positions(n, np.random.default_rng(3))
    medians = stats.resampled_medians(sample[None, :], positions)[0]
    resamples = sample[stats.resample_indices(n, np.random.default_rng(3))]
    assert np.array_equal(medians, np.median(resamples, axis=-1))


def test_the_resamples_are_every_way_of_drawing_with_replacement_equally_often():
    # n = 3: 27 equally likely index tuples; 4999 draws put each near 4999/27 = 185.
    draws = stats.resample_indices(3, np.random.default_rng(stats.SEED))
    assert draws.shape == (stats.BOOTSTRAP_RESAMPLES, 3)
    counts = {t: 0 for t in itertools.product(range(3), repeat=3)}
    for row in map(tuple, draws):
        counts[row] += 1
    assert scipy_stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_constant_and_too_short_samples_need_no_resampling():
    assert stats.median_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    assert stats.median_ci([4.0, None, float("nan")]) is None
    assert stats.geomean_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert stats.geomean_interval([2.0], single=(1.5, 2.5)) == (2.0, 1.5, 2.5)
