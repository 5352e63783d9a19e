"""The statistics of `compare` and the report, in one place: the bootstrap, medians with
their intervals, the Mann-Whitney test, the verdicts and the geometric mean of ratios.

Every interval here is a 95% percentile bootstrap (Efron and Tibshirani, "An Introduction to
the Bootstrap", 1993, ch. 13) of `BOOTSTRAP_RESAMPLES` resamples drawn from a generator
seeded with `SEED`, so the same store gives the same figures on every run. Two resampling
primitives draw them, and they are kept apart on purpose:

- `bootstrap_ratio` (compare's per-configuration ratio of medians) draws each resample as
  multinomial counts over the sorted sample (`median_positions`): no resample is built or
  sorted, which thousands of configurations need;
- `percentile_interval` (the report's median whisker, `median_ci`, and compare's summary,
  `geomean_interval`) is `scipy.stats.bootstrap`'s, which draws resample indices.

Both resample from the same distribution (a sample's values taken with replacement), but not
the same draws: moving either onto the other would change the intervals that compare and the
report print. So both stay, side by side here (tests/analysis/compare/test_compare.py holds the first
to scipy's within Monte Carlo error).

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


# ------------------------------------------------------------------ the ratio of medians (multinomial counts)


def median_positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For `BOOTSTRAP_RESAMPLES` resamples (with replacement) of n sorted values: the
    positions of each resample's two middle values (the same one twice for an odd n), so
    that a resample's median is the mean of the sorted sample at those positions.

    A resample of a sorted sample is its values taken c_1, ..., c_n times, the counts drawn
    from a multinomial(n, 1/n each); its k-th smallest value is the first x_(j) whose running
    count reaches k. No resample is built or sorted: the same resampling distribution as
    `scipy.stats.bootstrap`'s (which also shares its resample indices across stacked rows),
    50-160 times faster on this project's 2-core machine (2000 comparisons of 9 blocks a side:
    18.3 s with scipy, 0.36 s so), which a store of thousands of configurations needs
    (tests/analysis/compare/test_compare.py holds the two side by side)."""
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES)
    running = np.cumsum(counts, axis=-1)  # (resamples, n)
    lower = np.argmax(running >= (n + 1) // 2, axis=-1)  # the ceil(n/2)-th smallest
    upper = np.argmax(running >= n // 2 + 1, axis=-1)  # the (n/2 + 1)-th: the same one for an odd n
    return lower, upper


def resampled_medians(samples: np.ndarray, positions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Medians of the resamples `positions` stands for (`median_positions`), of each row of
    `samples` (m, n): an (m, resamples) array."""
    ordered = np.sort(samples, axis=-1)
    lower, upper = positions
    return (ordered[:, lower] + ordered[:, upper]) / 2


@functools.lru_cache(maxsize=64)
def _ratio_positions(n_base: int, n_other: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The resample positions of a comparison of n_base against n_other samples: from a
    generator seeded with SEED for each comparison, the baseline's drawn first. So an interval
    depends on its own samples only, never on what else was compared (--metric, --sweep) or
    in which order; and comparisons of the same sizes share one draw."""
    rng = np.random.default_rng(SEED)
    return median_positions(n_base, rng), median_positions(n_other, rng)


def bootstrap_ratio(base: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap intervals of median(other) / median(base), for stacked
    comparisons: `base` is (m, n_b), `other` (m, n_o), m comparisons with the same sample
    counts, each side resampled on its own. Returns (low, high), each of shape (m,)."""
    base_positions, other_positions = _ratio_positions(base.shape[-1], other.shape[-1])
    ratios = resampled_medians(other, other_positions) / resampled_medians(base, base_positions)
    low, high = np.quantile(ratios, [ALPHA / 2, 1 - ALPHA / 2], axis=-1)
    return low, high


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


# ------------------------------------------------------------------ one sample's statistic (resampled indices)


def percentile_interval(sample: np.ndarray, statistic: Callable, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile-bootstrap interval of `statistic` (vectorized, numpy-style `axis`) of
    one sample: `scipy.stats.bootstrap`, `BOOTSTRAP_RESAMPLES` resamples, seed `SEED`."""
    from scipy import stats

    result = stats.bootstrap((sample,), statistic, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


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
