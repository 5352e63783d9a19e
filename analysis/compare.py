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
trials (repeats, seeds, and the same configuration in several sweeps unless `sweep` narrows
it) are its repeats. Only ok trials count (as `ok_trials`).

The statistics (the README's "Compare GPU models" says the same)
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
  The resampling is `scipy.stats.bootstrap`'s, done through multinomial counts on sorted
  samples (`_resampled_medians`), which thousands of configurations need.
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

Torch-free, Ray-free and Click-free: the CLI (`stepscope compare`) prints what this returns.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np

from stepscope.errors import StepscopeError
from stepscope.workloads.storage.schema import PHASES

#: Significance level of the Mann-Whitney test (and 1 - ALPHA the interval's level).
ALPHA = 0.05
#: Bootstrap resamples per interval: scipy's default is 9999; 4999 keeps a percentile
#: interval's Monte Carlo error well under its width (Efron and Tibshirani 1993, sec. 19.3:
#: 1000 or more for percentile intervals) and a store of thousands of configurations fast.
BOOTSTRAP_RESAMPLES = 4999
#: The bootstrap's seed: the same store gives the same intervals on every run.
SEED = 20261129
#: The default minimum effect: a ratio within 5% either way is `same` (the issue's default;
#: runs on one GPU model differ by 4-20% between nodes, so smaller effects are rarely real).
MIN_EFFECT = 0.05
#: Axes that name the device: comparing by one of them leaves every device column out of
#: the configuration (the point is to put devices side by side).
DEVICE_AXES = frozenset({"device_name", "gpu", "gpu_model", "gpu_variant", "device_uuid", "compute_capability"})
#: Samples a side up to which the Mann-Whitney p-value is exact (no ties): scipy's exact
#: distribution is quick at these sizes; beyond, the normal approximation is within a few
#: percent of it (scipy's 'auto' switches at 8, where the approximation is already close).
EXACT_MAX = 30
#: Trials a side needs for the trial to be the sample: the fewest with which a two-sided
#: Mann-Whitney test can reach p < 0.05 (4 against 4: the most extreme of C(8, 4) = 70
#: orderings, twice, p = 2/70 = 0.029; 3 against 3 cannot go below 2/20 = 0.1). With fewer,
#: the samples are blocks of steps, pooled over the side's trials.
MIN_TRIALS = 4
#: Names that mean "the sweep" as an axis: the value is the sweep id (a name may be given
#: as the baseline when it names one sweep).
SWEEP_AXES = frozenset({"sweep", "sweep_id"})
#: The columns a configuration shows first, when they are not the axis.
KEY_COLUMNS = ("workload", "batch_size", "precision", "optimizer")
#: Environment fields whose differences between the baseline's trials and a value's are printed.
ENVIRONMENT = ("device_name", "gpu_variant", "gpu_model", "driver_version", "cuda_version", "cudnn_version",
               "torch_version", "python_version", "stepscope_version", "host")


@dataclass(frozen=True, slots=True)
class Metric:
    """One compared figure: `name` as the `metric` column shows it, what it is made of, and
    which direction is better."""

    name: str
    description: str
    lower_is_better: bool
    #: 'time' (faster/slower) or 'amount' (more/less)
    kind: str = "time"


METRICS: tuple[Metric, ...] = (
    Metric("step_ms", "median step time, ms (a whole step: every phase)", True),
    *(Metric(f"{p}_ms", f"median {p} phase time, ms", True) for p in PHASES),
    Metric("samples_per_s", "throughput of the median step: batch_size / step time", False),
    Metric("mfu", "model FLOPs utilization of the median step: (flops_forward + flops_backward) / step time "
                  "/ peak (the datasheet's, else the measured matmul peak)", False),
    Metric("peak_memory_bytes", "the trial's highest peak_allocated_bytes (CUDA), else peak_rss_bytes (CPU)",
           True, "amount"),
    Metric("energy_j_per_sample", "median board power (NVML) x step time / batch_size, joules", True, "amount"),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
_BY_NAME = {m.name: m for m in METRICS}


class CompareError(StepscopeError, ValueError):
    """The axis, the baseline or an option cannot be used on this store: one line naming the
    option and the fix."""


@dataclass(slots=True)
class CompareResult:
    """What `compare` found. `rows`, `summary` and `environment` are lists of dicts whose
    keys are `row_columns`, `SUMMARY_COLUMNS` and `ENVIRONMENT_COLUMNS`."""

    axis: str
    baseline: str
    values: list[str]
    row_columns: list[str]
    rows: list[dict]
    summary: list[dict]
    environment: list[dict]
    min_effect: float
    #: What the baseline has that a value lacks: per value, the baseline's configurations it has
    #: no ok trial of, and a value with trials none of which ended ok (GAP_COLUMNS).
    gaps: list[dict] = field(default_factory=list)
    #: The metrics `failing` looks at: step_ms when compared, else every compared metric.
    gate_metrics: list[str] = field(default_factory=lambda: ["step_ms"])
    #: seconds: 'query' (DuckDB running the queries and handing over their rows), 'read'
    #: (that and building the trials from them), 'samples' (the cells' samples), 'stats'
    #: (bootstrap, tests, summary, environment), 'total'
    timings: dict[str, float] = field(default_factory=dict)

    def failing(self, direction: str) -> list[dict]:
        """The rows of the gate's metrics (`gate_metrics`) whose verdict is `direction`
        ('slower', 'faster'; for 'changed' any verdict but `same` and `unsure`). Gaps (a
        configuration the baseline has and a value lacks, a value with no ok trial) are the
        CLI's to add: a gate on 'slower' or 'changed' fails on them too."""
        wanted = {"changed": {"slower", "faster", "more", "less"}}.get(direction, {direction})
        return [r for r in self.rows if r["metric"] in self.gate_metrics and r["verdict"] in wanted]


ROW_STATS = ("metric", "baseline", "value", "baseline_value", "other_value", "ratio", "ci_low", "ci_high",
             "p_value", "unit", "n_baseline", "n_other", "verdict")
SUMMARY_COLUMNS = ("value", "metric", "configs", "geomean_ratio", "ci_low", "ci_high",
                   "faster_or_less", "slower_or_more", "same", "unsure")
ENVIRONMENT_COLUMNS = ("value", "field", "baseline", "other")
GAP_COLUMNS = ("value", "missing_configs", "detail")


# ------------------------------------------------------------------ reading the store


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"select * from {relation} limit 0").description]


def _axis_expression(con: duckdb.DuckDBPyConnection, by: str) -> tuple[str, str]:
    """(SQL expression of the axis value over ok_trials `t`, the axis's canonical name)."""
    if not by or not by.strip():
        raise CompareError("--by: give an axis, e.g. --by device_name (a trials column or a workload parameter)")
    if by in SWEEP_AXES:
        return "t.sweep_id", "sweep"
    if by == "config":
        raise CompareError("--by config: the configuration is what is kept equal; give one of its parts, "
                           "e.g. --by precision")
    if by in _columns(con, "trials"):
        return f'cast(t."{by}" as varchar)', by
    # A workload parameter: any key of trials.params some ok trial has.
    path = "$." + json.dumps(by)
    found = con.execute("select count(*) from ok_trials where json_extract(params, ?) is not null",
                        [path]).fetchone()[0]
    if found:
        return f"json_extract_string(t.params, {_sql_string(path)})", by
    params = [r[0] for r in con.execute(
        "select distinct unnest(json_keys(params)) as k from ok_trials order by k").fetchall()]
    common = ("device_name", "gpu_model", "gpu", "gpu_variant", "precision", "batch_size", "sweep")
    extra = [p for p in params if p not in common and p != "seed"]
    raise CompareError(f"--by {by}: no such trials column or workload parameter; try one of "
                       f"{', '.join(common + tuple(extra))}")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_TRIALS_SQL = """
select
    {axis} as axis_value,
    t.sweep_id,
    t.trial_id,
    t.workload,
    t.batch_size,
    t.precision,
    t.optimizer,
    json_merge_patch(t.params, {drop}) as key_params,
    {device_key} as device_key,
    t.flops_forward + t.flops_backward as model_flops,
    coalesce(t.peak_tflops_datasheet, t.peak_tflops_measured) as peak_tflops,
    t.power_draw_w_p50,
    {environment},
    w.created_at as sweep_created_at
from ok_trials as t
left join sweeps as w on w.sweep_id = t.sweep_id
where {sweep_filter} and {axis} is not null
"""

_SUMMARIES_SQL = """
select
    s.sweep_id,
    s.trial_id,
    s.metric,
    s.p50,
    s.block_p50,
    coalesce(s.peak_allocated_bytes, s.peak_rss_bytes) as peak_bytes
from trial_summaries as s
semi join chosen as c on c.sweep_id = s.sweep_id and c.trial_id = s.trial_id
"""


@dataclass(slots=True)
class _Trial:
    axis_value: str
    key: tuple
    batch_size: int
    model_flops: float | None
    peak_tflops: float | None
    power_w: float | None
    environment: dict
    created_at: object
    step: dict[str, tuple[float, list[float]]] = field(default_factory=dict)  # metric -> (p50, blocks)
    peak_bytes: float | None = None


def _sweeps(con: duckdb.DuckDBPyConnection, sweep: str, axis: str, baseline: str | None) -> list[str] | None:
    """The sweep ids `--sweep` names (None: every sweep): 'all', 'latest', or a comma-separated
    list of sweep ids and sweep names (a name: every sweep of that name). With --by sweep and
    a --baseline, the baseline's sweep is always in: `--sweep latest` then compares the
    newest sweep with the baseline. CompareError names an unknown sweep."""
    known = con.execute("select sweep_id, name, created_at from sweeps union all select distinct sweep_id, null, null "
                        "from trials where sweep_id not in (select sweep_id from sweeps)").fetchall()
    by_name: dict[str, list[str]] = defaultdict(list)
    for sweep_id, name, _ in known:
        if name:
            by_name[name].append(sweep_id)
    ids = {row[0] for row in known}
    items = [item.strip() for item in sweep.split(",") if item.strip()]
    if not items:
        raise CompareError("--sweep: give all, latest, or sweep ids or names separated by commas")
    if "all" in items:
        return None
    chosen: list[str] = []
    for item in items:
        if item == "latest":
            dated = [r for r in known if r[2] is not None]
            if not dated:
                raise CompareError("--sweep latest: no sweeps row tells the newest sweep; give a sweep id")
            chosen.append(max(dated, key=lambda r: (r[2], r[0]))[0])
        elif item in ids:
            chosen.append(item)
        elif item in by_name:
            chosen += by_name[item]
        else:
            shown = ", ".join(sorted(ids)[:10]) + (f" (and {len(ids) - 10} more)" if len(ids) > 10 else "")
            raise CompareError(f"--sweep {item}: no such sweep in the store; use latest, all, or sweep ids or "
                               f"names: {shown or 'none'}")
    if axis == "sweep" and baseline is not None:
        if baseline in ids:
            chosen.append(baseline)
        elif len(by_name.get(baseline, ())) == 1:
            chosen += by_name[baseline]
    return sorted(set(chosen))


def _read(con: duckdb.DuckDBPyConnection, by: str, sweep: str, baseline: str | None = None
          ) -> tuple[str, list[_Trial], list[str], float, dict[str, dict]]:
    """(the axis's name, the ok trials with their summaries, the axis's values in order, the
    seconds DuckDB took: running the queries and handing over their results, and per axis
    value of the chosen sweeps' trials, every status: {'trials': n, 'ok': n, 'statuses': text})."""
    axis_sql, axis = _axis_expression(con, by)
    chosen_sweeps = _sweeps(con, sweep, axis, baseline)
    drop = {"seed": None}
    if axis not in SWEEP_AXES and axis != "sweep":
        drop[axis] = None
    device_key = "null" if axis in DEVICE_AXES else "concat_ws(' / ', coalesce(t.gpu_model, t.gpu), t.device_name)"
    environment = ", ".join(f't."{c}"' for c in ENVIRONMENT)
    sql = _TRIALS_SQL.format(axis=axis_sql, drop=_sql_string(json.dumps(drop)), device_key=device_key,
                             environment=environment, sweep_filter="($sweeps is null or list_contains($sweeps, t.sweep_id))")
    started = time.perf_counter()
    con.execute(f"create or replace temp table chosen as {sql}", {"sweeps": chosen_sweeps})
    rows = con.execute("select * exclude (sweep_id, trial_id), sweep_id, trial_id from chosen").fetchall()
    names = [d[0] for d in con.description]
    query_s = time.perf_counter() - started
    trials: dict[tuple[str, str], _Trial] = {}
    for row in rows:
        r = dict(zip(names, row, strict=True))
        key = tuple(None if name == axis else r[name] for name in KEY_COLUMNS) + (r["key_params"], r["device_key"])
        trials[(r["sweep_id"], r["trial_id"])] = _Trial(
            axis_value=r["axis_value"], key=key, batch_size=r["batch_size"], model_flops=r["model_flops"],
            peak_tflops=r["peak_tflops"], power_w=r["power_draw_w_p50"],
            environment={c: r[c] for c in ENVIRONMENT}, created_at=r["sweep_created_at"])
    # Columnar: a store of thousands of trials has hundreds of thousands of block medians,
    # which as Python objects would cost more than the query.
    started = time.perf_counter()
    table = con.sql(_SUMMARIES_SQL).to_arrow_table()
    query_s += time.perf_counter() - started
    blocks = table.column("block_p50").combine_chunks()
    offsets = blocks.offsets.to_numpy()
    values = blocks.flatten().to_numpy(zero_copy_only=False).astype(float)
    p50s = table.column("p50").to_numpy(zero_copy_only=False)
    peaks = table.column("peak_bytes").to_pylist()
    for i, (sweep_id, trial_id, metric) in enumerate(zip(table.column("sweep_id").to_pylist(),
                                                          table.column("trial_id").to_pylist(),
                                                          table.column("metric").to_pylist(), strict=True)):
        trial = trials.get((sweep_id, trial_id))
        if trial is None or p50s[i] is None or not np.isfinite(p50s[i]):
            continue
        trial.step[metric] = (float(p50s[i]), values[offsets[i]:offsets[i + 1]])
        if metric == "step":
            trial.peak_bytes = peaks[i]
    con.execute("drop table chosen")
    # A trial with no whole measured step has nothing to compare.
    kept = [t for t in trials.values() if "step" in t.step]
    statuses = _statuses(con, axis_sql, chosen_sweeps)
    return axis, kept, _ordered_values(axis, kept), query_s, statuses


def _statuses(con: duckdb.DuckDBPyConnection, axis_sql: str, sweeps: list[str] | None) -> dict[str, dict]:
    """Per axis value, the chosen sweeps' trials of every status: how many, how many ok, and
    the count of each status (e.g. '3 failed, 1 ok')."""
    rows = con.execute(
        f"""select axis_value, sum(n), sum(n) filter (where status = 'ok'),
                   string_agg(n || ' ' || status, ', ' order by status)
            from (select {axis_sql} as axis_value, t.status, count(*) as n from trials as t
                  where ($sweeps is null or list_contains($sweeps, t.sweep_id)) and {axis_sql} is not null
                  group by all)
            group by axis_value""", {"sweeps": sweeps}).fetchall()
    return {value: {"trials": int(total), "ok": int(ok or 0), "statuses": text} for value, total, ok, text in rows}


def _ordered_values(axis: str, trials: Sequence[_Trial]) -> list[str]:
    """The axis's values in their natural order: sweeps by creation, numbers as numbers,
    else as text. The first is the default baseline."""
    values = {t.axis_value for t in trials}
    if axis == "sweep":
        created: dict[str, str] = {}
        for t in trials:
            stamp = "" if t.created_at is None else t.created_at.isoformat()
            created[t.axis_value] = min(created.get(t.axis_value, stamp), stamp)
        return sorted(values, key=lambda v: (created[v], v))
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _resolve_baseline(con: duckdb.DuckDBPyConnection, axis: str, values: list[str], baseline: str | None) -> str:
    if baseline is None:
        return values[0]
    if baseline in values:
        return baseline
    if axis == "sweep":  # a sweep's name names it when it names one sweep with trials here
        ids = [r[0] for r in con.execute("select sweep_id from sweeps where name = ? order by created_at",
                                         [baseline]).fetchall() if r[0] in values]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise CompareError(f"--baseline {baseline}: {len(ids)} sweeps have that name ({', '.join(ids)}); "
                               "give one sweep id")
    try:  # 64 and 64.0 are one batch size
        match = [v for v in values if float(v) == float(baseline)]
        if len(match) == 1:
            return match[0]
    except ValueError:
        pass
    shown = ", ".join(values[:12]) + (f" and {len(values) - 12} more" if len(values) > 12 else "")
    raise CompareError(f"--baseline {baseline}: no ok trial has {axis} = {baseline!r}; its values here: {shown}")


# ------------------------------------------------------------------ samples and statistics


def _samples(cell: list[_Trial], metric: Metric, by_trial: bool) -> np.ndarray:
    """The cell's samples of `metric`: one per trial (`by_trial`) or one per block of steps."""
    if by_trial and metric.name != "peak_memory_bytes":
        return _trial_samples(cell, metric)
    parts: list[np.ndarray] = []
    for t in cell:
        if metric.name == "peak_memory_bytes":
            if t.peak_bytes is not None:
                parts.append(np.array([float(t.peak_bytes)]))
            continue
        source = "step" if metric.name in ("step_ms", "samples_per_s", "mfu", "energy_j_per_sample") \
            else metric.name.removesuffix("_ms")
        if source not in t.step:
            continue
        p50, blocks = t.step[source]
        derived = _derive(metric.name, np.array([p50]) if by_trial else blocks, t)
        if derived is not None:
            parts.append(derived[np.isfinite(derived)])
    return np.concatenate(parts) if parts else np.empty(0)


def _trial_samples(cell: list[_Trial], metric: Metric) -> np.ndarray:
    """One sample per trial (its median), the cell's trials at once: what `_samples` gives,
    without a numpy call per trial (cells of a hundred repeats are common in large stores)."""
    source = "step" if metric.name in ("step_ms", "samples_per_s", "mfu", "energy_j_per_sample") \
        else metric.name.removesuffix("_ms")
    had = [t for t in cell if source in t.step]
    ms = np.array([t.step[source][0] for t in had], dtype=float)
    if metric.name.endswith("_ms"):
        return ms[np.isfinite(ms)]
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = np.where(ms > 0, ms / 1000.0, np.nan)
        batch = np.array([t.batch_size for t in had], dtype=float)
        if metric.name == "samples_per_s":
            values = batch / seconds
        elif metric.name == "mfu":
            flops = np.array([t.model_flops or np.nan for t in had], dtype=float)
            peak = np.array([t.peak_tflops or np.nan for t in had], dtype=float)
            values = flops / seconds / (peak * 1e12)
        else:
            power = np.array([np.nan if t.power_w is None else t.power_w for t in had], dtype=float)
            values = power * seconds / batch
    return values[np.isfinite(values)]


def _derive(name: str, ms: np.ndarray, t: _Trial) -> np.ndarray | None:
    """`name`'s values for steps (or block medians) of `ms` milliseconds in trial `t`; None
    where the trial did not record what it needs (FLOPs and a peak; board power)."""
    if name.endswith("_ms"):
        return ms
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = np.where(ms > 0, ms / 1000.0, np.nan)
        if name == "samples_per_s":
            return t.batch_size / seconds
        if name == "mfu":
            if not t.model_flops or not t.peak_tflops:
                return None
            return t.model_flops / seconds / (t.peak_tflops * 1e12)
        if name == "energy_j_per_sample":
            if t.power_w is None:
                return None
            return t.power_w * seconds / t.batch_size
    raise AssertionError(name)


@dataclass(slots=True)
class _Pair:
    row: dict
    base: np.ndarray
    other: np.ndarray
    metric: Metric


def _verdict(metric: Metric, ratio: float | None, low: float | None, high: float | None, p: float | None,
             min_effect: float, tested: bool) -> str | None:
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
    if metric.kind == "amount":
        return "more" if up else "less"
    worse = up if metric.lower_is_better else not up
    return "slower" if worse else "faster"


def _median_positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For `BOOTSTRAP_RESAMPLES` resamples (with replacement) of n sorted values: the
    positions of each resample's two middle values (the same one twice for an odd n), so
    that a resample's median is the mean of the sorted sample at those positions.

    A resample of a sorted sample is its values taken c_1, ..., c_n times, the counts drawn
    from a multinomial(n, 1/n each); its k-th smallest value is the first x_(j) whose running
    count reaches k. No resample is built or sorted: the same resampling distribution as
    `scipy.stats.bootstrap`'s (which also shares its resample indices across stacked rows),
    50-160 times faster on this project's 2-core machine (2000 comparisons of 9 blocks a side:
    18.3 s with scipy, 0.36 s so), which a store of thousands of configurations needs
    (tests/analysis/test_compare.py holds the two side by side)."""
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES)
    running = np.cumsum(counts, axis=-1)  # (resamples, n)
    lower = np.argmax(running >= (n + 1) // 2, axis=-1)  # the ceil(n/2)-th smallest
    upper = np.argmax(running >= n // 2 + 1, axis=-1)  # the (n/2 + 1)-th: the same one for an odd n
    return lower, upper


def _resampled_medians(samples: np.ndarray, positions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Medians of the resamples `positions` stands for (`_median_positions`), of each row of
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
    return _median_positions(n_base, rng), _median_positions(n_other, rng)


def _bootstrap_ratio(base: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap intervals of median(other) / median(base), for stacked
    comparisons: `base` is (m, n_b), `other` (m, n_o), m comparisons with the same sample
    counts, each side resampled on its own. Returns (low, high), each of shape (m,)."""
    base_positions, other_positions = _ratio_positions(base.shape[-1], other.shape[-1])
    ratios = _resampled_medians(other, other_positions) / _resampled_medians(base, base_positions)
    low, high = np.quantile(ratios, [ALPHA / 2, 1 - ALPHA / 2], axis=-1)
    return low, high


def _mann_whitney(base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-values of stacked cells, (m, n_b) against (m, n_o); p = 1
    where the two cells' samples are all one value (no difference to test).

    The exact distribution of U when no value repeats and each cell has at most `EXACT_MAX`
    samples (blocks of steps, repeats), else the normal approximation with the tie
    correction. Chosen per comparison: stacked, scipy's 'auto' would look at the ties of the
    whole stack, and a p-value would depend on what else was compared."""
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


#: Comparisons bootstrapped at once: bounds the (chunk, resamples, n) arrays in memory.
_CHUNK_ELEMENTS = 20_000_000


def _test_pairs(pairs: list[_Pair], min_effect: float) -> None:
    """Fill ratio, interval, p and verdict of every pair, in stacks of equal sample counts."""
    groups: dict[tuple[int, int], list[_Pair]] = defaultdict(list)
    for pair in pairs:
        row = pair.row
        nb, no = len(pair.base), len(pair.other)
        row["n_baseline"], row["n_other"] = nb, no
        if nb == 0 or no == 0:
            row.update(baseline_value=float(np.median(pair.base)) if nb else None,
                       other_value=float(np.median(pair.other)) if no else None)
            continue
        b, o = float(np.median(pair.base)), float(np.median(pair.other))
        row.update(baseline_value=b, other_value=o, ratio=o / b if b else None)
        if nb >= 2 and no >= 2:
            groups[(nb, no)].append(pair)
        else:  # nothing to resample: one value a side
            # Peak memory repeats exactly and may be judged by the effect alone; one time
            # sample a side (a trial of fewer than 8 steps) says nothing of its noise.
            row["verdict"] = _verdict(pair.metric, row["ratio"], None, None, None, min_effect,
                                      tested=row["unit"] != "values")
    for members in groups.values():
        per_chunk = max(1, _CHUNK_ELEMENTS // (BOOTSTRAP_RESAMPLES * 3))  # two medians and their ratio
        for start in range(0, len(members), per_chunk):
            chunk = members[start:start + per_chunk]
            base = np.stack([m.base for m in chunk])
            other = np.stack([m.other for m in chunk])
            with np.errstate(all="ignore"):
                low, high = _bootstrap_ratio(base, other)
            p = _mann_whitney(base, other)
            for m, lo, hi, pv in zip(chunk, low, high, p, strict=True):
                row = m.row
                lo, hi = (float(lo), float(hi)) if math.isfinite(lo) and math.isfinite(hi) else (None, None)
                row.update(ci_low=lo, ci_high=hi, p_value=float(pv))
                row["verdict"] = _verdict(m.metric, row["ratio"], lo, hi, float(pv), min_effect, tested=True)


def _summaries(pairs: list[_Pair], values: list[str], baseline: str) -> list[dict]:
    from scipy import stats

    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for pair in pairs:
        if pair.row.get("ratio") and pair.row["ratio"] > 0:
            by[(pair.row["value"], pair.row["metric"])].append(pair.row)
    out = []
    for value in values:
        if value == baseline:
            continue
        for metric in METRICS:
            rows = by.get((value, metric.name))
            if not rows:
                continue
            logs = np.log([r["ratio"] for r in rows])
            geomean = float(np.exp(logs.mean()))
            if len(rows) == 1:
                low, high = rows[0].get("ci_low"), rows[0].get("ci_high")
            elif np.ptp(logs) == 0:
                low = high = geomean
            else:
                res = stats.bootstrap((logs,), np.mean, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                                      confidence_level=1 - ALPHA, method="percentile",
                                      rng=np.random.default_rng(SEED))
                low, high = float(np.exp(res.confidence_interval.low)), float(np.exp(res.confidence_interval.high))
            verdicts = [r.get("verdict") for r in rows]
            out.append({
                "value": value, "metric": metric.name, "configs": len(rows), "geomean_ratio": geomean,
                "ci_low": low, "ci_high": high,
                "faster_or_less": sum(v in ("faster", "less") for v in verdicts),
                "slower_or_more": sum(v in ("slower", "more") for v in verdicts),
                "same": verdicts.count("same"), "unsure": verdicts.count("unsure"),
            })
    return out


def _environment(trials: list[_Trial], values: list[str], baseline: str) -> list[dict]:
    seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for t in trials:
        for name, v in t.environment.items():
            if v is not None:
                seen[t.axis_value][name].add(str(v))
    out = []
    for value in values:
        if value == baseline:
            continue
        for name in ENVIRONMENT:
            a, b = seen[baseline].get(name, set()), seen[value].get(name, set())
            if a != b:
                out.append({"value": value, "field": name, "baseline": ", ".join(sorted(a)) or None,
                            "other": ", ".join(sorted(b)) or None})
    return out


# ------------------------------------------------------------------ the entry point


def compare(con: duckdb.DuckDBPyConnection, by: str, baseline: str | None = None, *, sweep: str = "all",
            min_effect: float = MIN_EFFECT, metrics: Sequence[str] | None = None) -> CompareResult:
    """Compare the values of axis `by` per configuration, against `baseline` (default: the
    first value: the oldest sweep, the smallest number, else the first in alphabetical order).

    `con`: a connection from `stepscope.analysis.warehouse.connect`. `sweep`: a sweep id,
    'latest' or 'all' (default: trials of every sweep). `min_effect`: a fraction (0.05 = 5%).
    `metrics`: names from `METRIC_NAMES` (default: all). Raises CompareError for an unknown
    axis, metric or baseline, a negative minimum effect, or an axis with fewer than 2 values.
    """
    if not (math.isfinite(min_effect) and 0 <= min_effect < 1):
        raise CompareError(f"--min-effect {min_effect}: give a fraction from 0 up to 1, e.g. 0.05 for 5%")
    chosen_metrics = list(METRICS)
    if metrics:
        unknown = [m for m in metrics if m not in _BY_NAME]
        if unknown:
            raise CompareError(f"--metric {', '.join(unknown)}: unknown; choose from {', '.join(METRIC_NAMES)}")
        chosen_metrics = [m for m in METRICS if m.name in set(metrics)]  # each once, in METRICS order
    started = time.perf_counter()
    axis, trials, values, query_s, statuses = _read(con, by, sweep, baseline)
    read_s = time.perf_counter() - started
    where = "in this store" if sweep == "all" else f"in --sweep {sweep}"
    if not statuses:
        raise CompareError(f"--by {by}: no trial {where} has a {by} value; choose another axis")
    if not trials:
        counts = "; ".join(f"{v}: {c['statuses']}" for v, c in sorted(statuses.items()))
        raise CompareError(f"--by {by}: no trial {where} ended ok ({counts}); compare reads ok trials only")
    if len(values) < 2:
        others = [f"{v} ({c['statuses']})" for v, c in sorted(statuses.items()) if v not in values]
        also = f"; {', '.join(others)} had no ok trial" if others else ""
        raise CompareError(f"--by {by}: the ok trials {where} have one value, {values[0]!r}{also}; compare needs "
                           f"2 or more (choose another axis, or run the grid with more, e.g. `gpus: each` for GPU "
                           f"models)")
    base_value = _resolve_baseline(con, axis, values, baseline)
    cells: dict[tuple, dict[str, list[_Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        cells[t.key][t.axis_value].append(t)
    shown_params = _varying_params(cells)
    row_columns = [c for c in KEY_COLUMNS if c != axis] + shown_params
    if axis not in DEVICE_AXES and len({k[5] for k in cells}) > 1:
        row_columns.append("device")
    row_columns += list(ROW_STATS)
    pairs: list[_Pair] = []
    for key in sorted(cells, key=_key_order):
        by_value = cells[key]
        if base_value not in by_value:
            continue
        config = _config_columns(key, axis, shown_params)
        for value in values:
            if value == base_value or value not in by_value:
                continue
            base_cell, other_cell = by_value[base_value], by_value[value]
            by_trial = len(base_cell) >= MIN_TRIALS and len(other_cell) >= MIN_TRIALS
            for metric in chosen_metrics:
                unit = "trials" if by_trial else "step blocks"
                if metric.name == "peak_memory_bytes" and not by_trial:
                    unit = "values"
                base = _samples(base_cell, metric, by_trial or unit == "values")
                other = _samples(other_cell, metric, by_trial or unit == "values")
                if not len(base) and not len(other):
                    continue  # not recorded on either side (MFU without FLOPs, energy on a CPU)
                row = {c: config.get(c) for c in row_columns if c not in ROW_STATS}
                row.update(metric=metric.name, baseline=base_value, value=value, baseline_value=None,
                           other_value=None, ratio=None, ci_low=None, ci_high=None, p_value=None, unit=unit,
                           n_baseline=0, n_other=0, verdict=None)
                pairs.append(_Pair(row, base, other, metric))
    samples_s = time.perf_counter() - started - read_s
    gaps = _gaps(cells, values, base_value, statuses, axis, shown_params)
    if not pairs:
        raise CompareError(_nothing_in_common(cells, base_value, axis, chosen_metrics))
    stats_started = time.perf_counter()
    _test_pairs(pairs, min_effect)
    rows = [p.row for p in pairs]
    summary = _summaries(pairs, values, base_value)
    environment = _environment(trials, values, base_value)
    return CompareResult(axis=axis, baseline=base_value, values=values, row_columns=row_columns, rows=rows,
                         summary=summary, environment=environment, min_effect=min_effect, gaps=gaps,
                         gate_metrics=["step_ms"] if any(m.name == "step_ms" for m in chosen_metrics)
                         else [m.name for m in chosen_metrics],
                         timings={"query": query_s, "read": read_s, "samples": samples_s,
                                  "stats": time.perf_counter() - stats_started,
                                  "total": time.perf_counter() - started})


def _key_order(key: tuple) -> tuple:
    return tuple((v is None, str(v) if not isinstance(v, int | float) else f"{v:020.6f}") for v in key)


def _varying_params(cells: dict[tuple, dict]) -> list[str]:
    """Parameters beyond KEY_COLUMNS whose values differ between two configurations of one
    workload (a depth, a sequence length): shown as columns so that those rows are told apart.
    A parameter that only tells workloads apart (each workload's own sizes) is not."""
    seen: dict[tuple[str, str], set] = defaultdict(set)  # (workload, parameter) -> values
    names: dict[str, set] = defaultdict(set)  # workload -> its parameters
    decoded = [(key[0], json.loads(key[4]) if key[4] else {}) for key in cells]
    for workload, params in decoded:
        names[workload].update(params)
    for workload, params in decoded:
        for name in names[workload]:
            seen[(workload, name)].add(json.dumps(params.get(name), sort_keys=True))
    skip = set(KEY_COLUMNS) | {"seed"}
    return sorted({name for (_, name), values in seen.items() if len(values) > 1 and name not in skip})


def _config_columns(key: tuple, axis: str, shown_params: list[str]) -> dict:
    workload, batch_size, precision, optimizer, params_json, device = key
    params = json.loads(params_json) if params_json else {}
    out = {"workload": workload, "batch_size": batch_size, "precision": precision, "optimizer": optimizer,
           "device": device}
    for name in shown_params:
        v = params.get(name)
        out[name] = v if v is None or isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


def _gaps(cells: dict[tuple, dict[str, list[_Trial]]], values: list[str], baseline: str,
          statuses: dict[str, dict], axis: str, shown_params: list[str]) -> list[dict]:
    """Per value, what the baseline has and it lacks: the baseline's configurations with no ok
    trial of the value (the first few named), and values whose trials none ended ok."""
    out = []
    for value in values:
        if value == baseline:
            continue
        missing = [key for key, by_value in cells.items() if baseline in by_value and value not in by_value]
        if missing:
            named = [_describe_key(k, axis, shown_params) for k in sorted(missing, key=_key_order)[:3]]
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            out.append({"value": value, "missing_configs": len(missing),
                        "detail": f"no ok trial of: {'; '.join(named)}{more}"})
    for value, counts in sorted(statuses.items()):
        if counts["ok"] == 0 and value != baseline:
            configs = sum(1 for by_value in cells.values() if baseline in by_value)
            out.append({"value": value, "missing_configs": configs,
                        "detail": f"no trial ended ok ({counts['statuses']})"})
    return out


def _describe_key(key: tuple, axis: str, shown_params: list[str]) -> str:
    config = _config_columns(key, axis, shown_params)
    parts = [f"{c}={config[c]}" for c in (*KEY_COLUMNS, *shown_params) if c != axis and config.get(c) is not None]
    if config.get("device"):
        parts.append(f"on {config['device']}")
    return " ".join(parts)


def _nothing_in_common(cells: dict[tuple, dict[str, list[_Trial]]], baseline: str, axis: str,
                       metrics: list[Metric]) -> str:
    """The line CompareError says when no configuration has the baseline and another value
    (or no compared metric was recorded for them)."""
    shared = [k for k, by_value in cells.items() if baseline in by_value and len(by_value) > 1]
    if shared:
        names = ", ".join(m.name for m in metrics)
        return (f"--metric {names}: not recorded for the configurations compared (MFU needs FLOPs and a peak; "
                f"energy needs NVML's power readings, on a GPU); choose other metrics")
    base_params = _param_values(k for k, by_value in cells.items() if baseline in by_value)
    other_params = _param_values(k for k, by_value in cells.items() if any(v != baseline for v in by_value))
    differ = sorted(n for n in base_params.keys() | other_params.keys()
                    if n != axis and base_params.get(n) != other_params.get(n))
    hint = f"; they differ in {', '.join(differ)}" if differ else ""
    return (f"--by {axis}: no configuration has both the baseline {baseline!r} and another value{hint}: "
            f"compare puts side by side trials that differ in {axis} only")


def _param_values(keys) -> dict[str, set]:
    values: dict[str, set] = defaultdict(set)
    for key in keys:
        params = json.loads(key[4]) if key[4] else {}
        for name, v in params.items():
            if name != "seed":
                values[name].add(json.dumps(v, sort_keys=True))
        if key[5]:
            values["device"].add(key[5])
    return values
