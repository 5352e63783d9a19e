"""The report's data: what its sections read, fetched once (`ReportData.load`), with the
configurations' labels and order. The named queries give most of it (queries/*.sql, their
own columns); the report's own selections are queries/report/*.sql; the phase plot's
interval is `stats.median_ci`'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from stepscope.analysis.keys import ConfigKey
from stepscope.analysis.queries import QueryError, read_sql, run_query
from stepscope.analysis.stats import MIN_TRIALS, median_ci
from stepscope.analysis.sweeps import sql_value
from stepscope.storage.schema import PHASES
from stepscope.workloads.params import PRECISIONS

#: Axes `compare` runs along when --by is not given: the first with two or more values.
DEFAULT_AXES = ("gpu_model", "device_name", "precision")


def _row_key(row: dict) -> tuple:
    return ConfigKey.row_key_of(row)


def _records(result) -> list[dict]:
    columns, rows = result
    return [dict(zip(columns, r, strict=True)) for r in rows]


def _sort_key(c: ConfigKey) -> tuple:
    precision = PRECISIONS.index(c.precision) if c.precision in PRECISIONS else len(PRECISIONS)
    return (c.workload, c.optimizer or "", c.sweep_id, c.batch_size, precision, c.precision, c.config_id or "",
            c.panel, c.device_name or "")


@dataclass(slots=True)
class _PhaseFigures:
    """One configuration's phase medians (ms), its median step and that step's CI."""

    phases: dict[str, float]
    step_ms: float | None
    ci: tuple[float, float] | None
    ci_unit: str  # 'trials', 'step blocks' or '' (no interval: fewer than 2 values)
    trials: int


@dataclass(slots=True)
class ReportData:
    """What the sections read, fetched once."""

    sweep: str
    configs: list[ConfigKey]
    labels: dict[tuple, str]
    figures: dict[tuple, _PhaseFigures]
    step_stats: dict[tuple, dict]
    status_counts: dict[str, int]
    not_ok: list[dict]
    batch_scaling: list[dict]
    utilization: list[dict]
    memory: list[dict]
    ratios: list[dict]
    launch: list[dict]
    devices: list[dict]
    sweeps: list[dict]

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, sweep: str, chosen: list[str] | None) -> ReportData:
        """What the sections read, of the sweeps `chosen` (`sweeps.resolve`'s answer to the
        selection `sweep`, as the user gave it: the named queries resolve that text again)."""
        own = {"sweep": sql_value(chosen)}  # the report's own SQL (queries/report/)
        params = {"sweep": sweep}  # the named queries'
        step_stats = {}
        configs = []
        for row in _fetch(con, read_sql("report/configs.sql"), own):
            config = ConfigKey.from_row(row)
            configs.append(config)
            step_stats[config.row_key] = row
        configs.sort(key=_sort_key)
        counts = {r["status"]: r["n"] for r in _fetch(con, read_sql("report/status_counts.sql"), own)}
        trials = _records(run_query(con, "trials", params))
        return cls(
            sweep=sweep,
            configs=configs,
            labels=config_labels(configs),
            figures=_phase_figures(con, own, step_stats),
            step_stats=step_stats,
            status_counts=counts,
            not_ok=[t for t in trials if t["status"] != "ok"],
            batch_scaling=_records(run_query(con, "batch_scaling", params)),
            utilization=_records(run_query(con, "utilization", params)),
            memory=_records(run_query(con, "memory_breakdown", params)),
            ratios=_records(run_query(con, "backward_forward_ratio", params)),
            launch=_records(run_query(con, "launch_bound", params)),
            devices=_fetch(con, read_sql("report/devices.sql"), own),
            sweeps=_fetch(con, read_sql("report/sweeps.sql"), own),
        )

    def config(self, key: tuple) -> ConfigKey | None:
        return next((c for c in self.configs if c.row_key == key), None)


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> list[dict]:
    try:
        cursor = con.execute(sql, params)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]


def _phase_figures(con, params: dict, step_stats: dict[tuple, dict]) -> dict[tuple, _PhaseFigures]:
    """Per configuration: its phases' medians, its median step and that step's interval
    (queries/report/phases.sql; `stats.median_ci` over trials or step blocks, as compare)."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in _fetch(con, read_sql("report/phases.sql"), params):
        rows.setdefault(_row_key(r), {})[r["metric"]] = r
    figures = {}
    for key, metrics in rows.items():
        if key not in step_stats:
            continue  # no whole measured step: nothing to draw
        step = metrics.get("step")
        ci, unit = None, ""
        if step is not None and step["trials"] >= MIN_TRIALS:  # compare's rule: enough trials to test
            ci, unit = median_ci(step["trial_p50"]), "trials"
        elif step is not None:
            ci, unit = median_ci(step["block_p50"] or []), "step blocks"
        figures[key] = _PhaseFigures(
            phases={p: metrics[p]["p50"] for p in PHASES if p in metrics},
            step_ms=step["p50"] if step else None,
            ci=ci,
            ci_unit=unit if ci else "",
            trials=step["trials"] if step else 0,
        )
    return figures


def config_labels(configs: Sequence[ConfigKey], omit: Sequence[str] = ()) -> dict[tuple, str]:
    """A short label per configuration, unique within its GPU model: workload, `bs=N`,
    precision (unless omitted), then what varies in `configs` (optimizer, sweep), then,
    where two still read the same, the device and the config_id."""
    vary = [f for f in ("optimizer", "sweep_id") if len({getattr(c, f) for c in configs}) > 1]

    def base(c: ConfigKey) -> str:
        parts = [c.workload, f"bs={c.batch_size}"]
        parts += [] if "precision" in omit else [c.precision]
        return " ".join([*parts, *(str(getattr(c, f)) for f in vary)])

    labels = {c.row_key: base(c) for c in configs}
    for extra in ("device_name", "config_id"):
        groups: dict[tuple, list[ConfigKey]] = {}
        for c in configs:
            groups.setdefault((c.panel, *(getattr(c, f) for f in omit), labels[c.row_key]), []).append(c)
        for members in groups.values():
            if len({m.row_key for m in members}) > 1 and len({getattr(m, extra) for m in members}) > 1:
                for m in members:
                    labels[m.row_key] += f" {getattr(m, extra)}"
    return labels


def default_axis(data_or_configs) -> str | None:
    """The first of DEFAULT_AXES along which the configurations take two or more values."""
    configs = data_or_configs.configs if isinstance(data_or_configs, ReportData) else data_or_configs
    for axis in DEFAULT_AXES:
        if len({getattr(c, axis) for c in configs if getattr(c, axis) is not None}) > 1:
            return axis
    return None


def _label(data: ReportData, row: dict) -> str:
    key = _row_key(row)
    return data.labels.get(key) or f"{row['workload']} bs={row['batch_size']} {row['precision']}"


def _ordered_labels(data: ReportData, rows: Sequence[dict]) -> list[str]:
    """The labels of `rows`' configurations in the report's order (workload, batch size, precision)."""
    order = {data.labels[c.row_key]: i for i, c in enumerate(data.configs)}
    return sorted({_label(data, r) for r in rows}, key=lambda label: (order.get(label, len(order)), label))


def _panel_of(row: dict) -> str:
    return row.get("gpu_model") or row.get("device_name") or "unknown device"


def _precision_rank(p: str) -> int:
    return PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)
