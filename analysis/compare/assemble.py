"""`compare`'s assembly: the cells of each configuration, their samples, the pairs of the
baseline and each value, their statistics (`stepscope.analysis.stats`), the summary, the
environment differences and the gaps; `compare` itself, the entry point."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from stepscope.analysis.compare.model import (
    BY,
    DEVICE_AXES,
    ENVIRONMENT,
    KEY_COLUMNS,
    METRIC_NAMES,
    METRICS,
    METRICS_FIELD,
    MIN_EFFECT_FIELD,
    ROW_STATS,
    SWEEP,
    CompareError,
    CompareResult,
    Metric,
)
from stepscope.analysis.compare.read import Trial, read, resolve_baseline
from stepscope.analysis.keys import ConfigKey
from stepscope.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    MIN_EFFECT,
    MIN_TRIALS,
    bootstrap_ratio,
    geomean_interval,
    mann_whitney,
    verdict,
)

_BY_NAME = {m.name: m for m in METRICS}


# ------------------------------------------------------------------ the entry point


def compare(con: duckdb.DuckDBPyConnection, by: str, baseline: str | None = None, *, sweep: str | None = None,
            min_effect: float = MIN_EFFECT, metrics: Sequence[str] | None = None) -> CompareResult:
    """Compare the values of axis `by` per configuration, against `baseline` (default: the
    first value: the oldest sweep, the smallest number, else the first in alphabetical order).

    `con`: a connection from `stepscope.analysis.warehouse.connect`. `sweep`: which sweeps'
    trials (`stepscope.analysis.sweeps`: ids, names, 'latest', 'all', comma-separated); None,
    the default: the latest sweep, but every sweep when the axis is the sweep (`by='sweep'`,
    whose baseline's sweep is always in). `min_effect`: a fraction (0.05 = 5%).
    `metrics`: names from `METRIC_NAMES` (default: all). Raises CompareError for an unknown
    axis, metric or baseline, a negative minimum effect, or an axis with fewer than 2 values.
    """
    if not (math.isfinite(min_effect) and 0 <= min_effect < 1):
        raise CompareError(MIN_EFFECT_FIELD, f" {min_effect}: give a fraction from 0 up to 1, e.g. 0.05 for 5%")
    chosen_metrics = list(METRICS)
    if metrics:
        unknown = [m for m in metrics if m not in _BY_NAME]
        if unknown:
            raise CompareError(METRICS_FIELD, f" {', '.join(unknown)}: unknown; choose from {', '.join(METRIC_NAMES)}")
        chosen_metrics = [m for m in METRICS if m.name in set(metrics)]  # each once, in METRICS order
    started = time.perf_counter()
    found = read(con, by, sweep, baseline)
    axis, trials, values, query_s, statuses = found.axis, found.trials, found.values, found.query_s, found.statuses
    read_s = time.perf_counter() - started
    where = ("in this store",) if found.sweep == "all" else \
        ("in ", SWEEP, f" {found.sweep}" + (" (the default)" if found.defaulted else ""))
    if not statuses:
        raise CompareError(BY, f" {by}: no trial ", *where, f" has a {by} value; choose another axis")
    if not trials:
        counts = "; ".join(f"{v}: {c['statuses']}" for v, c in sorted(statuses.items()))
        raise CompareError(BY, f" {by}: no trial ", *where, f" ended ok ({counts}); compare reads ok trials only")
    if len(values) < 2:
        others = [f"{v} ({c['statuses']})" for v, c in sorted(statuses.items()) if v not in values]
        also = f"; {', '.join(others)} had no ok trial" if others else ""
        raise CompareError(BY, f" {by}: the ok trials ", *where, f" have one value, {values[0]!r}{also}; compare "
                           f"needs 2 or more (choose another axis, or run the grid with more, e.g. `gpus: each` "
                           f"for GPU models)")
    base_value = resolve_baseline(con, axis, values, baseline)
    cells: dict[ConfigKey, dict[str, list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        cells[t.key][t.axis_value].append(t)
    shown_params = _varying_params(cells)
    row_columns = [c for c in KEY_COLUMNS if c != axis] + shown_params
    if axis not in DEVICE_AXES and len({k.device for k in cells}) > 1:
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
        raise CompareError(*_nothing_in_common(cells, base_value, axis, chosen_metrics))
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


def _key_order(key: ConfigKey) -> tuple:
    """Configurations in order: workload, batch size, precision, optimizer, parameters, device."""
    parts = (key.workload, key.batch_size, key.precision, key.optimizer, key.config_id, key.device)
    return tuple((v is None, str(v) if not isinstance(v, int | float) else f"{v:020.6f}") for v in parts)


def _device(key: ConfigKey, axis: str) -> str | None:
    """The configuration's device as one text; None when the device is the axis."""
    return None if axis in DEVICE_AXES else key.device


def _varying_params(cells: dict[ConfigKey, dict]) -> list[str]:
    """Parameters beyond KEY_COLUMNS whose values differ between two configurations of one
    workload (a depth, a sequence length): shown as columns so that those rows are told apart.
    A parameter that only tells workloads apart (each workload's own sizes) is not."""
    seen: dict[tuple[str, str], set] = defaultdict(set)  # (workload, parameter) -> values
    names: dict[str, set] = defaultdict(set)  # workload -> its parameters
    decoded = [(key.workload, json.loads(key.config_id) if key.config_id else {}) for key in cells]
    for workload, params in decoded:
        names[workload].update(params)
    for workload, params in decoded:
        for name in names[workload]:
            seen[(workload, name)].add(json.dumps(params.get(name), sort_keys=True))
    skip = set(KEY_COLUMNS) | {"seed"}
    return sorted({name for (_, name), values in seen.items() if len(values) > 1 and name not in skip})


def _config_columns(key: ConfigKey, axis: str, shown_params: list[str]) -> dict:
    params = json.loads(key.config_id) if key.config_id else {}
    out = {"workload": key.workload, "batch_size": key.batch_size, "precision": key.precision,
           "optimizer": key.optimizer, "device": _device(key, axis)}
    for name in shown_params:
        v = params.get(name)
        out[name] = v if v is None or isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


def _gaps(cells: dict[ConfigKey, dict[str, list[Trial]]], values: list[str], baseline: str,
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


def _describe_key(key: ConfigKey, axis: str, shown_params: list[str]) -> str:
    config = _config_columns(key, axis, shown_params)
    parts = [f"{c}={config[c]}" for c in (*KEY_COLUMNS, *shown_params) if c != axis and config.get(c) is not None]
    if config.get("device"):
        parts.append(f"on {config['device']}")
    return " ".join(parts)


def _nothing_in_common(cells: dict[ConfigKey, dict[str, list[Trial]]], baseline: str, axis: str,
                       metrics: list[Metric]) -> tuple:
    """The line CompareError says (its parts) when no configuration has the baseline and
    another value (or no compared metric was recorded for them)."""
    shared = [k for k, by_value in cells.items() if baseline in by_value and len(by_value) > 1]
    if shared:
        names = ", ".join(m.name for m in metrics)
        return (METRICS_FIELD, f" {names}: not recorded for the configurations compared (MFU needs FLOPs and a "
                "peak; energy needs NVML's power readings, on a GPU); choose other metrics")
    base_params = _param_values((k for k, by_value in cells.items() if baseline in by_value), axis)
    other_params = _param_values((k for k, by_value in cells.items() if any(v != baseline for v in by_value)), axis)
    differ = sorted(n for n in base_params.keys() | other_params.keys()
                    if n != axis and base_params.get(n) != other_params.get(n))
    hint = f"; they differ in {', '.join(differ)}" if differ else ""
    return (BY, f" {axis}: no configuration has both the baseline {baseline!r} and another value{hint}: "
            f"compare puts side by side trials that differ in {axis} only")


def _param_values(keys, axis: str) -> dict[str, set]:
    values: dict[str, set] = defaultdict(set)
    for key in keys:
        params = json.loads(key.config_id) if key.config_id else {}
        for name, v in params.items():
            if name != "seed":
                values[name].add(json.dumps(v, sort_keys=True))
        device = _device(key, axis)
        if device:
            values["device"].add(device)
    return values


# ------------------------------------------------------------------ samples and statistics


def _samples(cell: list[Trial], metric: Metric, by_trial: bool) -> np.ndarray:
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


def _trial_samples(cell: list[Trial], metric: Metric) -> np.ndarray:
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


def _derive(name: str, ms: np.ndarray, t: Trial) -> np.ndarray | None:
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
    return verdict(ratio, low, high, p, min_effect, tested=tested, kind=metric.kind,
                   lower_is_better=metric.lower_is_better)


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
                low, high = bootstrap_ratio(base, other)
            p = mann_whitney(base, other)
            for m, lo, hi, pv in zip(chunk, low, high, p, strict=True):
                row = m.row
                lo, hi = (float(lo), float(hi)) if math.isfinite(lo) and math.isfinite(hi) else (None, None)
                row.update(ci_low=lo, ci_high=hi, p_value=float(pv))
                row["verdict"] = _verdict(m.metric, row["ratio"], lo, hi, float(pv), min_effect, tested=True)


def _summaries(pairs: list[_Pair], values: list[str], baseline: str) -> list[dict]:
    """Per value and metric: the geometric mean of the ratios across configurations, its
    interval (`stats.geomean_interval`), and how many configurations had each verdict."""
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
            geomean, low, high = geomean_interval([r["ratio"] for r in rows],
                                                  single=(rows[0].get("ci_low"), rows[0].get("ci_high")))
            verdicts = [r.get("verdict") for r in rows]
            out.append({
                "value": value, "metric": metric.name, "configs": len(rows), "geomean_ratio": geomean,
                "ci_low": low, "ci_high": high,
                "faster_or_less": sum(v in ("faster", "less") for v in verdicts),
                "slower_or_more": sum(v in ("slower", "more") for v in verdicts),
                "same": verdicts.count("same"), "unsure": verdicts.count("unsure"),
            })
    return out


def _environment(trials: list[Trial], values: list[str], baseline: str) -> list[dict]:
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


