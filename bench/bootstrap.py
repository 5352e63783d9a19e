"""How fast is compare's bootstrap of the ratio of medians next to scipy's own?

`stepscope.analysis.stats.bootstrap_ratio` gives, for each of m stacked comparisons, exactly
the interval `scipy.stats.bootstrap` gives over the two samples in ascending order
(tests/analysis/test_stats.py holds them equal to the last bit). scipy builds every resample
of every comparison and takes its median; bootstrap_ratio sorts the resample indices once per
sample size and reads every comparison's resampled medians off them. This prints, for m
comparisons of n samples a side, both times, their ratio, and whether the intervals agree.

    python bench/bootstrap.py                    # m = 200, 2000 at n = 9; about a minute on 2 cores
    python bench/bootstrap.py --m 100 --n 4,30

scipy is run on the stacked samples (axis=-1, vectorized), its fastest use for this.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats as scipy_stats

from stepscope.analysis import stats


def _scipy(base: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def ratio(b, o, axis=-1):
        return np.median(o, axis=axis) / np.median(b, axis=axis)
    ci = scipy_stats.bootstrap((np.sort(base, axis=-1), np.sort(other, axis=-1)), ratio, vectorized=True,
                               n_resamples=stats.BOOTSTRAP_RESAMPLES, confidence_level=stats.CONFIDENCE,
                               method="percentile", rng=np.random.default_rng(stats.SEED), axis=-1).confidence_interval
    return np.asarray(ci.low), np.asarray(ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="200,2000", help="comparisons, comma-separated (default 200,2000)")
    parser.add_argument("--n", default="9", help="samples a side, comma-separated (default 9)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'m':>6} {'n':>4} {'stepscope_s':>12} {'scipy_s':>9} {'speedup':>8}  same")
    for n in map(int, args.n.split(",")):
        for m in map(int, args.m.split(",")):
            base, other = rng.lognormal(0, 0.1, (m, n)), rng.lognormal(0.05, 0.1, (m, n))
            stats._ratio_positions.cache_clear()
            t0 = time.perf_counter()
            ours = stats.bootstrap_ratio(base, other)
            t1 = time.perf_counter()
            theirs = _scipy(base, other)
            t2 = time.perf_counter()
            same = all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
            print(f"{m:>6} {n:>4} {t1 - t0:>12.3f} {t2 - t1:>9.3f} {(t2 - t1) / (t1 - t0):>7.0f}x  {same}")


if __name__ == "__main__":
    main()
