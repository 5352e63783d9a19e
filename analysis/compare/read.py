"""`compare`'s reading of the store: the axis as SQL, the chosen sweeps' ok trials with their
summaries (columnar, as thousands of trials need), every status per axis value, and the
axis's values in order."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np

from stepscope.analysis.compare.model import (
    BASELINE,
    BY,
    DEVICE_AXES,
    ENVIRONMENT,
    KEY_COLUMNS,
    SWEEP_AXES,
    CompareError,
)
from stepscope.analysis.keys import ConfigKey
from stepscope.analysis.sweeps import default_for, resolve
from stepscope.analysis.warehouse import sql_string


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"select * from {relation} limit 0").description]


def _axis_expression(con: duckdb.DuckDBPyConnection, by: str) -> tuple[str, str]:
    """(SQL expression of the axis value over ok_trials `t`, the axis's canonical name)."""
    if not by or not by.strip():
        raise CompareError(BY, ": give an axis, e.g. ", BY, " device_name (a trials column or a workload parameter)")
    if by in SWEEP_AXES:
        return "t.sweep_id", "sweep"
    if by == "config":
        raise CompareError(BY, " config: the configuration is what is kept equal; give one of its parts, e.g. ",
                           BY, " precision")
    if by in _columns(con, "trials"):
        return f'cast(t."{by}" as varchar)', by
    # A workload parameter: any key of trials.params some ok trial has.
    path = "$." + json.dumps(by)
    found = con.execute("select count(*) from ok_trials where json_extract(params, ?) is not null",
                        [path]).fetchone()[0]
    if found:
        return f"json_extract_string(t.params, {sql_string(path)})", by
    params = [r[0] for r in con.execute(
        "select distinct unnest(json_keys(params)) as k from ok_trials order by k").fetchall()]
    common = ("device_name", "gpu_model", "gpu", "gpu_variant", "precision", "batch_size", "sweep")
    extra = [p for p in params if p not in common and p != "seed"]
    raise CompareError(BY, f" {by}: no such trials column or workload parameter; try one of "
                       f"{', '.join(common + tuple(extra))}")



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
    {gpu_model} as key_gpu_model,
    {device_name} as key_device_name,
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
class Trial:
    """One ok trial as compare reads it: its axis value, what configuration it is, what its
    derived metrics need, its environment, and its summaries."""

    axis_value: str
    key: ConfigKey
    batch_size: int
    model_flops: float | None
    peak_tflops: float | None
    power_w: float | None
    environment: dict
    created_at: object
    step: dict[str, tuple[float, list[float]]] = field(default_factory=dict)  # metric -> (p50, blocks)
    peak_bytes: float | None = None


@dataclass(slots=True)
class Read:
    """What `read` found: the axis's name, the sweeps read (their ids; None: every sweep)
    and the selection as given (`sweep`: for messages), the ok trials with their summaries,
    the axis's values in order, the seconds DuckDB took (running the queries and handing over
    their results), and per axis value of the chosen sweeps' trials, every status:
    {'trials': n, 'ok': n, 'statuses': text}."""

    axis: str
    sweep: str
    defaulted: bool
    trials: list[Trial]
    values: list[str]
    query_s: float
    statuses: dict[str, dict]


def read(con: duckdb.DuckDBPyConnection, by: str, sweep: str | None, baseline: str | None = None) -> Read:
    """The trials to compare along `by`, of the sweeps `sweep` names (None: the default,
    every sweep for the axis `sweep`, else `sweeps.DEFAULT`); with --by sweep and a
    --baseline, the baseline's sweep is always in, so `--sweep latest` compares the newest
    sweep with the baseline."""
    axis_sql, axis = _axis_expression(con, by)
    text = default_for(sweep, by_sweep=axis == "sweep")
    keep = [baseline] if axis == "sweep" and baseline is not None else []
    chosen_sweeps = resolve(con, text, keep=keep)
    drop = {"seed": None}
    if axis not in SWEEP_AXES and axis != "sweep":
        drop[axis] = None
    device = axis not in DEVICE_AXES  # else the device is the axis, not part of the configuration
    environment = ", ".join(f't."{c}"' for c in ENVIRONMENT)
    sql = _TRIALS_SQL.format(axis=axis_sql, drop=sql_string(json.dumps(drop)),
                             gpu_model="coalesce(t.gpu_model, t.gpu)" if device else "null",
                             device_name="t.device_name" if device else "null",
                             environment=environment, sweep_filter="($sweeps is null or list_contains($sweeps, t.sweep_id))")
    started = time.perf_counter()
    con.execute(f"create or replace temp table chosen as {sql}", {"sweeps": chosen_sweeps})
    rows = con.execute("select * exclude (sweep_id, trial_id), sweep_id, trial_id from chosen").fetchall()
    names = [d[0] for d in con.description]
    query_s = time.perf_counter() - started
    trials: dict[tuple[str, str], Trial] = {}
    for row in rows:
        r = dict(zip(names, row, strict=True))
        # What is kept equal: every parameter but the seed and the axis (config_id: them as
        # JSON), on one device unless the axis is a device; pooled over sweeps.
        key = ConfigKey(sweep_id=None, **{name: None if name == axis else r[name] for name in KEY_COLUMNS},
                        config_id=r["key_params"], gpu_model=r["key_gpu_model"], device_name=r["key_device_name"])
        trials[(r["sweep_id"], r["trial_id"])] = Trial(
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
    return Read(axis, text, sweep is None, kept, _ordered_values(axis, kept), query_s, statuses)


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


def _ordered_values(axis: str, trials: Sequence[Trial]) -> list[str]:
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


def resolve_baseline(con: duckdb.DuckDBPyConnection, axis: str, values: list[str], baseline: str | None) -> str:
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
            raise CompareError(BASELINE, f" {baseline}: {len(ids)} sweeps have that name ({', '.join(ids)}); "
                               "give one sweep id")
    try:  # 64 and 64.0 are one batch size
        match = [v for v in values if float(v) == float(baseline)]
        if len(match) == 1:
            return match[0]
    except ValueError:
        pass
    shown = ", ".join(values[:12]) + (f" and {len(values) - 12} more" if len(values) > 12 else "")
    raise CompareError(BASELINE, f" {baseline}: no ok trial has {axis} = {baseline!r}; its values here: {shown}")

