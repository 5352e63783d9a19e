"""Put the values of one axis side by side: `stepscope compare --by AXIS`.

For every configuration that has the baseline value and another value of the axis, and for
each metric, `compare` gives the two values, their ratio, a 95% confidence interval of the
ratio, a significance test, and a verdict; then, per value and metric, the geometric mean of
the ratios across configurations with its own interval; then the environment differences
(driver, CUDA, torch, stepscope versions, device) between the baseline's trials and each
value's.

What is compared
----------------
A *configuration* here is everything that identifies a trial but the axis and the seed: the
workload's parameters (`trials.params` without `seed` and without the axis), and the device
(`gpu_model`, else the requested `gpu`, and `device_name`) unless the axis is a device axis
(`DEVICE_AXES`). Trials of one configuration and one axis value are a *cell*; a cell's
trials (repeats, seeds, and the same configuration in each sweep `sweep` chooses: the latest
by default, every sweep for `--by sweep`; `stepscope.analysis.sweeps`) are its repeats. Only ok trials count (as `ok_trials`).

The statistics (docs/statistics.md says the same)
----------------------------------------------------------------
- *Samples.* When both cells have at least `MIN_TRIALS` (4) trials, a sample is a trial: its
  median step (`trial_summaries.p50`), so repeat-to-repeat differences (another node, another
  boot) are what the interval is made of. Otherwise (a cell with one trial, the usual
  single-repeat sweep, or 2-3 repeats: too few for a test) a sample is a block of consecutive
  steps: its median (`trial_summaries.block_p50`, blocks of ceil(cbrt(n)) steps), pooled over
  the cell's trials; the `unit` column says which. Steps
  next to each other are not independent (clocks, caches, the allocator warm up and drift
  together); blocks keep that dependence inside a unit, as the block bootstrap does (Kuensch,
  Ann. Statist. 17(3), 1989).
- *Statistic and ratio.* A cell's value is the median of its samples; `ratio` is the other
  value's over the baseline's, so 2.0 is "twice the baseline's" (for step time: twice as
  slow; for samples/s: twice as fast).
- *Confidence interval.* 95% percentile bootstrap of the ratio of medians, each cell
  resampled on its own (`BOOTSTRAP_RESAMPLES` resamples, a fixed seed so that a rerun prints
  the same interval; Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).
  The interval is `scipy.stats.bootstrap`'s over each cell's samples in ascending order, to
  the last bit, computed from resample indices sorted once per sample size
  (`stats.median_positions`), which thousands of configurations need.
- *Test.* Two-sided Mann-Whitney U test of the two cells' samples (`scipy.stats.mannwhitneyu`),
  the test asv uses to tell a change from noise (asv's `asv.step_detect` / `asv compare`,
  https://asv.readthedocs.io/en/stable/dev.html). Samples that are all equal give p = 1.
- *Verdict.* `same` when the ratio is within the minimum effect (`min_effect`, default 5%:
  1/(1 + e) <= ratio <= 1 + e, symmetric in the log, so "2x faster" and "2x slower" are as far
  from `same`); else, when p < `ALPHA` and the interval excludes 1, `slower`/`faster` (time,
  throughput, MFU) or `more`/`less` (memory, energy); else `unsure` (a difference beyond the
  minimum effect that these samples cannot tell from noise: more repeats or steps would).
  Peak memory is one number per trial: with one trial a side there is nothing to resample, the
  `unit` is `values`, there is no interval or test, and the verdict is `same` or the direction
  by the minimum effect alone (the allocator's peak repeats exactly on one device and build).
- *Summary.* Per value and metric: the geometric mean of the ratios across configurations
  (the mean of their logs, exponentiated: the right mean of ratios, Fleming and Wallace,
  "How not to lie with statistics: the correct way to summarize benchmark results", CACM
  29(3), 1986), with a 95% percentile bootstrap interval over configurations (one
  configuration: its own interval), and how many configurations had each verdict.

The package: `model` (axes, metrics, the result, the error), `read` (the SQL and the trials
it gives), `assemble` (cells, samples, pairs, summary, gaps; `compare` itself); the statistics
are `stepscope.analysis.stats`', which the report shares.

Torch-free, Ray-free and Click-free: the CLI (`stepscope compare`) prints what this returns.
"""

from stepscope.analysis.compare.assemble import compare
from stepscope.analysis.compare.model import (
    DEVICE_AXES,
    ENVIRONMENT,
    ENVIRONMENT_COLUMNS,
    GAP_COLUMNS,
    KEY_COLUMNS,
    METRIC_NAMES,
    METRICS,
    ROW_STATS,
    SUMMARY_COLUMNS,
    SWEEP_AXES,
    CompareError,
    CompareResult,
    Metric,
)
from stepscope.analysis.stats import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    EXACT_MAX,
    MIN_EFFECT,
    MIN_TRIALS,
    SEED,
)

__all__ = [
    "ALPHA", "BOOTSTRAP_RESAMPLES", "DEVICE_AXES", "ENVIRONMENT", "ENVIRONMENT_COLUMNS", "EXACT_MAX", "GAP_COLUMNS",
    "KEY_COLUMNS", "METRICS", "METRIC_NAMES", "MIN_EFFECT", "MIN_TRIALS", "ROW_STATS", "SEED", "SUMMARY_COLUMNS",
    "SWEEP_AXES", "CompareError", "CompareResult", "Metric", "compare",
]
