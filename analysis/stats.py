"""The statistics of `compare` and the report, in one place: the bootstrap, medians with
their intervals, the Mann-Whitney test, the verdicts and the geometric mean of ratios.

Every interval here is a 95% percentile bootstrap (Efron and Tibshirani, "An Introduction to
the Bootstrap", 1993, ch. 13) of `BOOTSTRAP_RESAMPLES` resamples drawn from a generator
seeded with `SEED`, so the same store gives the same figures on every run. One function draws
every resample, `resample_indices`, exactly as `scipy.stats.bootstrap` draws them, and one takes
every interval from the bootstrap distribution, `percentile_bounds`, as scipy does: each
interval here *is* scipy's percentile interval, to the last bit (tests/analysis/test_stats.py
holds all three uses to `scipy.stats.bootstrap`). Compare's ratio of medians resamples each
sample in ascending order (its stored order is an accident of the files, and an interval
should not depend on it), which lets `bootstrap_ratio` sort the resample indices once per
sample size (`median_positions`) instead of building and sorting every resample of every
comparison, with the same intervals 45 times faster (`python bench/bootstrap.py`: 2000
comparisons of 9 samples a side, 0.50 s against scipy's 22.7 s on 2 busy cores), which a store
of thousands of configurations needs.

Torch-free, Ray-free, DuckDB-free: numpy and scipy only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

#: Significance level of the Mann-Whitney test (and 1 - ALPHA every interval's level).
ALPHA = 0.05
#: The confidence level of every interval.
CONFIDENCE = 1 - ALPHA
#: Bootstrap resamples per interval: scipy's default is 9999; 4999 keeps a percentile
#: interval's Monte Carlo error well under its width (Efron and Tibshirani 1993, sec. 19.3:
#: 1000 or more for percentile intervals) and a store of thousands of configurations fast.
BOOTSTRAP_RESAMPLES = 4999
#: The bootstrap's seed: the same store gives the same intervals on every run.
SEED = 20261129
#: The default minimum effect: a ratio within 5% either way is `same` (the issue's default;
#: runs on one GPU model differ by 4-20% between nodes, so smaller effects are rarely real).
MIN_EFFECT = 0.05
#: Samples a side up to which the Mann-Whitney p-value is exact (no ties): scipy's exact
#: distribution is quick at these sizes; beyond, the normal approximation is within a few
#: percent of it (scipy's 'auto' switches at 8, where the approximation is already close).
EXACT_MAX = 30
#: Trials a side needs for the trial to be the sample: the fewest with which a two-sided
#: Mann-Whitney test can reach p < 0.05 (4 against 4: the most extreme of C(8, 4) = 70
#: orderings, twice, p = 2/70 = 0.029; 3 against 3 cannot go below 2/20 = 0.1). With fewer,
#: the samples are blocks of steps, pooled over the side's trials.
MIN_TRIALS = 4


# ------------------------------------------------------------------ verdicts


def verdict(ratio: float | None, low: float | None, high: float | None, p: float | None, min_effect: float,
            *, tested: bool, kind: str = "time", lower_is_better: bool = True) -> str | None:
    """`same` within the minimum effect (1/(1 + e) <= ratio <= 1 + e, symmetric in the log);
    else, when p < ALPHA and the interval excludes 1 (or `tested` is False: one value a side,
    judged by the effect alone), `slower`/`faster` (kind 'time') or `more`/`less` (kind
    'amount'); else `unsure`. None for a missing or non-finite ratio."""
    if ratio is None or not math.isfinite(ratio):
        return None
    if max(ratio, 1 / ratio) <= 1 + min_effect + 1e-12:
        return "same"
    if tested:
        significant = p is not None and p < ALPHA and low is not None and (low > 1 or high < 1)
    else:
        significant = True  # one value a side: the direction by the minimum effect alone
    if not significant:
        return "unsure"
    up = ratio > 1
    if kind == "amount":
        return "more" if up else "less"
    worse = up if lower_is_better else not up
    return "slower" if worse else "faster"


# ------------------------------------------------------------------ the bootstrap


def resample_indices(n: int, rng: np.random.Generator) -> np.ndarray:
    """`BOOTSTRAP_RESAMPLES` resamples of n values, with replacement, as indices into them:
    an integer array (BOOTSTRAP_RESAMPLES, n), drawn as `scipy.stats.bootstrap` draws one
    sample's resamples (`rng.integers(0, n, (resamples, n))`, scipy.stats._resampling's
    `_bootstrap_resample`), so that the same generator gives the same resamples as scipy."""
    return rng.integers(0, n, (BOOTSTRAP_RESAMPLES, n))


def percentile_bounds(distribution: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided percentile interval of a bootstrap distribution along its last axis:
    (low, high), each of its shape less that axis; `scipy.stats.bootstrap`'s method
    'percentile' (its alpha, `scipy.stats.quantile`, linear interpolation)."""
    from scipy import stats

    alpha = (1 - confidence) / 2
    bounds = stats.quantile(distribution, np.asarray([alpha, 1 - alpha]), axis=-1)
    return bounds[..., 0], bounds[..., 1]


def median_positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For the resamples `resample_indices(n, rng)` draws of n *sorted* values: the positions
    of each resample's two middle values (the same one twice for an odd n), so that a
    resample's median is the mean of the sorted sample at those positions.

    A resample of a sorted sample x is x at its indices; sorted, it is x at its sorted indices
    (x is monotone in the index), so its k-th smallest value is x at the resample's k-th smallest
    index. No resample of any comparison is built or sorted: only the indices, once per size."""
    ordered = np.sort(resample_indices(n, rng), axis=-1)
    return ordered[:, (n - 1) // 2], ordered[:, n // 2]


def resampled_medians(samples: np.ndarray, positions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Medians of the resamples `positions` stands for (`median_positions`), of each row of
    `samples` (m, n): an (m, resamples) array, equal to `np.median` of each resample."""
    ordered = np.sort(samples, axis=-1)
    lower, upper = positions
    return (ordered[:, lower] + ordered[:, upper]) / 2


@functools.lru_cache(maxsize=64)
def _ratio_positions(n_base: int, n_other: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The resample positions of a comparison of n_base against n_other samples: from a
    generator seeded with SEED for each comparison, the baseline's drawn first (as scipy draws
    the samples of `bootstrap((base, other), ...)` in order). So an interval depends on its own
    samples only, never on what else was compared (--metric, --sweep) or in which order; and
    comparisons of the same sizes share one draw."""
    rng = np.random.default_rng(SEED)
    return median_positions(n_base, rng), median_positions(n_other, rng)


def bootstrap_ratio(base: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap intervals of median(other) / median(base), for stacked
    comparisons: `base` is (m, n_b), `other` (m, n_o), m comparisons with the same sample
    counts, each side resampled on its own. Returns (low, high), each of shape (m,): for each
    row, what `scipy.stats.bootstrap((sorted base, sorted other), median ratio,
    paired=False, method='percentile', rng=default_rng(SEED))` gives."""
    base_positions, other_positions = _ratio_positions(base.shape[-1], other.shape[-1])
    ratios = resampled_medians(other, other_positions) / resampled_medians(base, base_positions)
    return percentile_bounds(ratios)


# ------------------------------------------------------------------ the test


def mann_whitney(base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-values of stacked cells, (m, n_b) against (m, n_o); p = 1
    where the two cells' samples are all one value (no difference to test).

    The test asv uses to tell a change from noise (asv's `asv.step_detect` / `asv compare`,
    https://asv.readthedocs.io/en/stable/dev.html). The exact distribution of U when no value
    repeats and each cell has at most `EXACT_MAX` samples (blocks of steps, repeats), else the
    normal approximation with the tie correction. Chosen per comparison: stacked, scipy's
    'auto' would look at the ties of the whole stack, and a p-value would depend on what else
    was compared."""
    from scipy import stats

    both = np.concatenate([base, other], axis=-1)
    ordered = np.sort(both, axis=-1)
    ties = (np.diff(ordered, axis=-1) == 0).any(axis=-1)
    exact_ok = max(base.shape[-1], other.shape[-1]) <= EXACT_MAX
    p = np.ones(len(both))
    for method, chosen in (("exact", ~ties if exact_ok else np.zeros_like(ties)),
                           ("asymptotic", ties if exact_ok else np.ones_like(ties))):
        if chosen.any():
            with np.errstate(all="ignore"):
                p[chosen] = stats.mannwhitneyu(other[chosen], base[chosen], alternative="two-sided", axis=-1,
                                               method=method).pvalue
    constant = np.ptp(both, axis=-1) == 0
    return np.where(constant | np.isnan(p), 1.0, p)


# ------------------------------------------------------------------ one sample's statistic


def percentile_interval(sample: np.ndarray, statistic: Callable, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile-bootstrap interval of `statistic` (vectorized, numpy-style `axis`) of
    one sample (n,): `resample_indices` from a generator seeded with SEED, `percentile_bounds`;
    what `scipy.stats.bootstrap((sample,), statistic, method='percentile')` gives."""
    resamples = sample[resample_indices(len(sample), np.random.default_rng(SEED))]
    low, high = percentile_bounds(statistic(resamples, axis=-1), confidence)
    return float(low), float(high)


def median_ci(values: Iterable[float | None], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the median of `values` (nulls and non-finite
    values dropped; `percentile_interval`). None with fewer than 2 values; (v, v) when every
    value is v."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return None
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    return percentile_interval(v, np.median, confidence)


def geomean_interval(ratios: Sequence[float], single: tuple[float | None, float | None] = (None, None)
                     ) -> tuple[float, float | None, float | None]:
    """(geometric mean, interval low, high) of positive `ratios`: the mean of their logs,
    exponentiated (the right mean of ratios: Fleming and Wallace, "How not to lie with
    statistics: the correct way to summarize benchmark results", CACM 29(3), 1986), with a
    percentile-bootstrap interval of that mean over the ratios. One ratio: `single`, its own
    interval; ratios all equal: (g, g)."""
    logs = np.log(ratios)
    geomean = float(np.exp(logs.mean()))
    if len(ratios) == 1:
        return geomean, single[0], single[1]
    if np.ptp(logs) == 0:
        return geomean, geomean, geomean
    low, high = percentile_interval(logs, np.mean, CONFIDENCE)
    return geomean, float(np.exp(low)), float(np.exp(high))
