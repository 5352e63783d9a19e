"""`stepscope report`: one self-contained HTML file that a person reads instead of tables.

What it shows, per configuration (every parameter but the seed, on one GPU model and device:
intermediate.sql's `config` key), section by section:

- the phases of the step as stacked bars, one column of plots per GPU model, with the 95%
  bootstrap CI of the median step as a whisker;
- throughput (samples/s of the median step) against batch size, a line per GPU model and
  precision, one plot per workload;
- MFU by GPU model x precision (heat maps, against the datasheet peak and the measured one);
- the memory breakdown (parameters, gradients, optimizer state, activations, autocast weight
  copies, CUDA context) against the device's capacity;
- backward/forward ratio; launch-bound configurations (host vs device time);
- the compare table with verdicts (`stepscope.analysis.compare`);
- each device's exact identity (the `devices` view) and each sweep's spec (YAML).

Every figure comes from the views and named queries (queries/*.sql), never re-derived: the
stacked phases are each phase's median over the configuration's trials of the trial's median
(trial_summaries.p50, the figure config_step_stats' step_ms_p50 is for the whole step), the
others are the named queries' own columns, printed beside each plot.

Why matplotlib, rendered to static SVG and inlined: the file opens offline, with no JavaScript
and nothing fetched; it prints; the same store gives the same bytes (fixed `svg.hashsalt`, no
date, a fixed bootstrap seed); text stays text (`svg.fonttype = 'none'`), so it is small and
searchable; and it is one well-kept dependency that the rest of the analysis layer can use too.
An interactive bundle was rejected for its size: plotly's offline HTML inlines all of plotly.js,
~3.5 MB in every file (`include_plotlyjs=True`, https://plotly.com/python/interactive-html-export/). `matplotlib.figure.Figure` is used directly, never pyplot: no global
figure manager, no GUI backend, nothing left open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import io
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import duckdb
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter
from scipy import stats

from stepscope.analysis.compare import BOOTSTRAP_RESAMPLES, MIN_TRIALS
from stepscope.analysis.compare import SEED as COMPARE_SEED
from stepscope.analysis.queries import QueryError, run_query
from stepscope.errors import StepscopeError
from stepscope.workloads.params import PRECISIONS
from stepscope.workloads.storage.schema import PHASES

#: The confidence level of every interval the report draws.
CONFIDENCE = 0.95
#: Bootstrap resamples and seed: compare's (stepscope.analysis.compare), so the report's
#: whiskers and the compare section's intervals are drawn alike; fixed, so the same store
#: gives the same report.
N_RESAMPLES = BOOTSTRAP_RESAMPLES
SEED = COMPARE_SEED
#: Axes `compare` runs along when --by is not given: the first with two or more values.
DEFAULT_AXES = ("gpu_model", "device_name", "precision")
#: Backward/forward ratio of dense layers: backward computes two matmuls (the gradients of the
#: input and of the weight) per forward matmul. Kaplan et al., "Scaling Laws for Neural Language
#: Models" (2020), section 2.1, https://arxiv.org/abs/2001.08361: C_backward ~= 2 C_forward.
TEXTBOOK_BACKWARD_FORWARD = 2.0
#: The launch_bound query's default threshold (queries/launch_bound.sql).
LAUNCH_THRESHOLD = 0.9
MIB = 2**20

#: Okabe and Ito's colour-blind-safe palette (https://jfly.uni-koeln.de/color/).
_OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999", "#000000")
PHASE_COLORS = dict(zip(PHASES, ("#999999", "#E69F00", "#56B4E9", "#F0E442", "#0072B2", "#D55E00"), strict=True))
#: memory_breakdown columns stacked, in order, with their legend names and colours.
MEMORY_PARTS = (
    ("param_mib", "parameters", "#0072B2"),
    ("grad_mib", "gradients", "#56B4E9"),
    ("optimizer_state_mib", "optimizer state", "#D55E00"),
    ("activation_mib", "activations", "#009E73"),
    ("autocast_weight_mib", "autocast weight copies", "#CC79A7"),
    ("cuda_context_mib", "CUDA context", "#999999"),
)
_PRECISION_MARKERS = dict(zip(PRECISIONS, ("o", "s", "^", "v", "D", "P"), strict=True))
_PRECISION_LINES = dict(zip(PRECISIONS, ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))), strict=True))

_STYLE = {
    "svg.fonttype": "none",  # text as <text>: small, searchable, the browser's font
    "text.parse_math": False,  # a `$` in a workload name is a dollar sign
    "font.size": 9,
    "font.sans-serif": ["DejaVu Sans"],  # one name per <text>, not matplotlib's list of ten
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e4e4e4",
    "legend.frameon": False,
}


class ReportError(StepscopeError):
    """The report cannot be written where asked (--out), or the selection is wrong."""


@dataclass(frozen=True, slots=True)
class ReportInfo:
    """What `write_report` wrote: `path` (absolute), `size_bytes`, and per section
    (its id) whether it holds a plot."""

    path: str
    size_bytes: int
    plots: dict[str, bool]


# ---------------------------------------------------------------- entry points


def write_report(
    con: duckdb.DuckDBPyConnection,
    out_path: str,
    *,
    sweep: str = "all",
    by: str | None = None,
    baseline: str | None = None,
    store: str | None = None,
) -> ReportInfo:
    """Render the report for the store behind `con` and write it to `out_path` atomically
    (a temporary file in the same folder, then renamed over it).

    `sweep`: a sweep id, 'latest' or 'all'; `by`, `baseline`: the compare section's axis and
    baseline value (default axis: the first of DEFAULT_AXES with two or more values);
    `store`: the store's location, shown in the heading.
    Raises ReportError for an --out that cannot be written (check_out_path), QueryError for
    an unknown sweep, and what `compare` raises for a bad axis or baseline.
    """
    path = check_out_path(out_path)
    text, plots = render_report(con, sweep=sweep, by=by, baseline=baseline, store=store)
    data = text.encode("utf-8")
    folder = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stepscope-report-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ReportError(f"--out {out_path}: cannot write in {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for others to read
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ReportError(f"--out {out_path}: cannot write it: {exc.strerror or exc}") from None
    return ReportInfo(path, len(data), plots)


def check_out_path(out_path: str) -> str:
    """The absolute path to write the report to, or ReportError naming --out and the fix:
    its folder must exist and be writable, and the path must not be a folder."""
    path = os.path.abspath(os.path.expanduser(out_path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ReportError(f"--out {out_path}: is a folder; give a file name such as {os.path.join(out_path, 'report.html')}")
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ReportError(f"--out {out_path}: the folder {folder} {what}; create it or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReportError(f"--out {out_path}: cannot write in the folder {folder} (permission denied); write elsewhere")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ReportError(f"--out {out_path}: the file exists and is read-only; remove it or write elsewhere")
    return path


def render_report(
    con: duckdb.DuckDBPyConnection,
    *,
    sweep: str = "all",
    by: str | None = None,
    baseline: str | None = None,
    store: str | None = None,
) -> tuple[str, dict[str, bool]]:
    """The report's HTML text, and per section id whether it holds a plot (see write_report)."""
    _check_sweep(con, sweep)
    data = _Data.load(con, sweep)
    sections = [
        _phase_section(data),
        _throughput_section(data),
        _mfu_section(data),
        _memory_section(data),
        _ratio_section(data),
        _launch_section(data),
        _compare_section(con, data, by, baseline),
        _device_section(data),
        _sweep_section(data),
    ]
    body = _heading(data, store, sections) + "".join(s.html for s in sections)
    return _page(body), {s.id: s.has_plot for s in sections}


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration: intermediate.sql's `config` key, spread."""

    sweep_id: str
    workload: str
    batch_size: int
    precision: str
    optimizer: str | None
    config_id: str | None
    gpu_model: str | None
    device_name: str | None

    @property
    def key(self) -> tuple:
        """What names a configuration in every named query's rows (config_id covers every
        parameter but the seed; utilization leaves out the optimizer, batch_scaling the id)."""
        return (self.sweep_id, self.config_id, self.gpu_model, self.device_name)

    @property
    def panel(self) -> str:
        """The GPU model it ran on (else the device's name): what the report compares side by side."""
        return self.gpu_model or self.device_name or "unknown device"


def _row_key(row: dict) -> tuple:
    return (row["sweep_id"], row["config_id"], row["gpu_model"], row["device_name"])


def _records(result) -> list[dict]:
    columns, rows = result
    return [dict(zip(columns, r, strict=True)) for r in rows]


def _sort_key(c: Config) -> tuple:
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
class _Data:
    """What the sections read, fetched once."""

    sweep: str
    configs: list[Config]
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
    def load(cls, con: duckdb.DuckDBPyConnection, sweep: str) -> _Data:
        params = {"sweep": sweep}
        step_stats = {}
        configs = []
        for row in _fetch(con, "select config.*, * exclude (config) from config_step_stats "
                               "where in_sweep(config.sweep_id, $sweep)", params):
            config = Config(**{f.name: row[f.name] for f in dataclasses.fields(Config)})
            configs.append(config)
            step_stats[config.key] = row
        configs.sort(key=_sort_key)
        counts = {r["status"]: r["n"] for r in _fetch(
            con, "select status, count(*) as n from trials where in_sweep(sweep_id, $sweep) group by status", params)}
        trials = _records(run_query(con, "trials", params))
        return cls(
            sweep=sweep,
            configs=configs,
            labels=config_labels(configs),
            figures=_phase_figures(con, sweep, step_stats),
            step_stats=step_stats,
            status_counts=counts,
            not_ok=[t for t in trials if t["status"] != "ok"],
            batch_scaling=_records(run_query(con, "batch_scaling", params)),
            utilization=_records(run_query(con, "utilization", params)),
            memory=_records(run_query(con, "memory_breakdown", params)),
            ratios=_records(run_query(con, "backward_forward_ratio", params)),
            launch=_records(run_query(con, "launch_bound", params)),
            devices=_fetch(con, _DEVICES_SQL, params),
            sweeps=_fetch(con, "select * from sweeps where in_sweep(sweep_id, $sweep) order by created_at, sweep_id",
                          params),
        )

    def config(self, key: tuple) -> Config | None:
        return next((c for c in self.configs if c.key == key), None)


#: The devices the chosen trials ran on, as last seen (the devices view keeps one row each).
_DEVICES_SQL = """
select d.*
from devices as d
where d.device_uuid in (select device_uuid from trials where in_sweep(sweep_id, $sweep))
    or d.sweep_id in (select sweep_id from trials where in_sweep(sweep_id, $sweep))
order by d.device_kind, d.device_name, d.host, d.device_uuid
"""


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> list[dict]:
    try:
        cursor = con.execute(sql, params)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]


#: Per configuration and metric ('step' or a phase): the median over its ok trials of each
#: trial's median (trial_summaries.p50), and what the CI resamples, as `compare` does: the
#: trials' medians with MIN_TRIALS trials or more, else the block medians of all its trials.
_PHASE_SQL = """
select
    t.config.sweep_id, t.config.config_id, t.config.gpu_model, t.config.device_name,
    s.metric,
    count(*) as trials,
    median(s.p50) as p50,
    list(s.p50 order by t.trial_id) as trial_p50,
    flatten(list(s.block_p50 order by t.trial_id)) as block_p50
from ok_trials as t
inner join trial_summaries as s
    on s.sweep_id = t.sweep_id and s.trial_id = t.trial_id
where in_sweep(t.sweep_id, $sweep)
group by all
"""


def _phase_figures(con, sweep: str, step_stats: dict[tuple, dict]) -> dict[tuple, _PhaseFigures]:
    rows: dict[tuple, dict[str, dict]] = {}
    for r in _fetch(con, _PHASE_SQL, {"sweep": sweep}):
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


def median_ci(values: Iterable[float | None], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the median of `values` (nulls and non-finite
    values dropped): scipy.stats.bootstrap, N_RESAMPLES resamples, seed SEED. None with fewer
    than 2 values; (v, v) when every value is v."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return None
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    result = stats.bootstrap(
        (v,), np.median, confidence_level=confidence, n_resamples=N_RESAMPLES, method="percentile",
        vectorized=True, rng=np.random.default_rng(SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def config_labels(configs: Sequence[Config], omit: Sequence[str] = ()) -> dict[tuple, str]:
    """A short label per configuration, unique within its GPU model: workload, `bs=N`,
    precision (unless omitted), then what varies in `configs` (optimizer, sweep), then,
    where two still read the same, the device and the config_id."""
    vary = [f for f in ("optimizer", "sweep_id") if len({getattr(c, f) for c in configs}) > 1]

    def base(c: Config) -> str:
        parts = [c.workload, f"bs={c.batch_size}"]
        parts += [] if "precision" in omit else [c.precision]
        return " ".join([*parts, *(str(getattr(c, f)) for f in vary)])

    labels = {c.key: base(c) for c in configs}
    for extra in ("device_name", "config_id"):
        groups: dict[tuple, list[Config]] = {}
        for c in configs:
            groups.setdefault((c.panel, *(getattr(c, f) for f in omit), labels[c.key]), []).append(c)
        for members in groups.values():
            if len({m.key for m in members}) > 1 and len({getattr(m, extra) for m in members}) > 1:
                for m in members:
                    labels[m.key] += f" {getattr(m, extra)}"
    return labels


def _check_sweep(con: duckdb.DuckDBPyConnection, sweep: str) -> None:
    """--sweep must be 'all', 'latest' or a sweep of the store."""
    if sweep in ("all", "latest"):
        return
    known = [r["sweep_id"] for r in _fetch(
        con, "select distinct sweep_id from (select sweep_id from sweeps union all select sweep_id from trials) "
             "order by sweep_id", {})]
    if sweep not in known:
        shown = ", ".join(known[:10]) + (f" (and {len(known) - 10} more)" if len(known) > 10 else "")
        raise QueryError(f"--sweep {sweep}: no such sweep in the store; use latest, all, or one of: {shown or 'none'}")


# ---------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class _Section:
    id: str
    title: str
    html: str
    has_plot: bool


def _section(sid: str, title: str, intro: str, parts: Iterable[str], has_plot: bool) -> _Section:
    body = f'<section id="{sid}"><h2>{html.escape(title)}</h2>{_p(intro) if intro else ""}{"".join(parts)}</section>\n'
    return _Section(sid, title, body, has_plot)


def _phase_section(data: _Data) -> _Section:
    title = "Where a step's time goes"
    configs = [c for c in data.configs if c.key in data.figures]
    if not configs:
        return _section("phases", title, "", [_note("No ok trial with a whole measured step in this selection.")],
                        False)
    svg = _phase_plot(configs, data)
    units = sorted({f.ci_unit for f in data.figures.values() if f.ci_unit})
    caption = (
        "Each bar stacks the six phases' medians (ms): per configuration, the median over its ok trials of each "
        "trial's median phase time (trial_summaries.p50). The black tick is the median step (config_step_stats."
        "step_ms_p50: the median of the trials' median steps), its whisker that median's 95% percentile-bootstrap "
        f"interval ({N_RESAMPLES} resamples, seed {SEED}) over the configuration's trials when it has {MIN_TRIALS} or more, "
        "else over its trials' medians of consecutive step blocks (as compare does). A sum of medians is not the median of "
        "sums: the bar's end and the tick agree when the steps are steady. Plots share a row's scale: read "
        "a workload across GPU models left to right."
        + (f" Intervals here are over: {', '.join(units)}." if units else " No configuration had two values to "
           "resample: no interval is drawn.")
    )
    columns = ["GPU model", "configuration", "trials", *[f"{p} ms" for p in PHASES], "sum of phases ms",
               "median step ms", "95% CI ms", "CI over"]
    rows = []
    for c in configs:
        f = data.figures[c.key]
        ci = f"{_fmt(f.ci[0], 3)} – {_fmt(f.ci[1], 3)}" if f.ci else None
        rows.append([c.panel, data.labels[c.key], f.trials, *[f.phases.get(p) for p in PHASES],
                     sum(f.phases.values()), f.step_ms, ci, f.ci_unit or None])
    return _section("phases", title, "", [_figure(svg, caption), _details("Phase medians", _table(columns, rows, 3))],
                    True)


def _throughput_section(data: _Data) -> _Section:
    title = "Throughput against batch size"
    rows = [r for r in data.batch_scaling if r["samples_per_s_p50"] is not None]
    if not rows:
        return _section("throughput", title, "", [_note("No ok trial with a measured step in this selection.")], False)
    svg = _throughput_plot(rows)
    caption = ("Samples per second of the median step (batch_size × 1000 / step_ms_p50; the batch_scaling query's "
               "samples_per_s_p50), one line per GPU model and precision, one plot per workload. Where a workload "
               "has several series on one GPU model and precision (other parameters differ), the series hash tells "
               "them apart. A hollow ring around a point: that configuration's steps were unstable (pyperf's check): rerun "
               "before reading a difference from them.")
    columns = ["GPU model", "workload", "precision", "series", "batch size", "trials", "samples/s (median step)",
               "samples/s (wall clock)", "median step ms", "throughput ×", "efficiency %", "unstable"]
    table = _table(columns, [[_panel_of(r), r["workload"], r["precision"], r["series"], r["batch_size"], r["trials"],
                              r["samples_per_s_p50"], r["samples_per_s"], r["step_ms_p50"], r["throughput_x"],
                              r["efficiency_pct"], r["unstable"]] for r in rows], 3)
    return _section("throughput", title, "", [_figure(svg, caption), _details("batch_scaling", table)], True)


def _mfu_section(data: _Data) -> _Section:
    title = "Model FLOPs utilization (MFU) by GPU model and precision"
    rows = data.utilization
    if not rows:
        return _section("mfu", title, "", [_note("MFU not recorded: no ok trial in this selection has counted FLOPs "
                                                  "(trials.flops_forward is null).")], False)
    bases = [(col, name) for col, name in (("mfu_datasheet", "against the datasheet peak"),
                                           ("mfu_measured", "against the measured matmul peak"))
             if any(r[col] is not None for r in rows)]
    missing = [name for col, name in (("mfu_datasheet", "against the datasheet peak"),
                                      ("mfu_measured", "against the measured matmul peak"))
               if all(r[col] is None for r in rows)]
    notes = [_note(f"MFU {m}: not recorded for any configuration here"
                   + (" (no datasheet peak is known for these devices: a CPU, or a board the peaks table lacks)."
                      if "datasheet" in m else "."))
             for m in missing]
    svg = _mfu_plot(rows, bases, data) if bases else ""
    caption = ("MFU = model FLOPs (forward + backward, PaLM's convention) per mean measured step over the peak "
               "FLOP/s, in %, from the utilization query. Rows: configurations (precision is the column); columns: "
               "GPU model × precision. Grey: not recorded. An asterisk marks a configuration whose MFU carries a "
               "flag (mfu_flags in the table): do not read it without that flag's explanation.")
    columns = ["GPU model", "GPU variant", "configuration", "GFLOP/step", "step TFLOP/s", "peak TFLOP/s (datasheet)",
               "peak TFLOP/s (measured)", "MFU datasheet", "MFU measured", "HFU datasheet", "unstable", "flags"]
    table_rows = []
    for r in rows:
        c = data.config(_row_key(r))
        table_rows.append([_panel_of(r), r["gpu_variant"], data.labels.get(_row_key(r), c and c.workload),
                           r["gflops_per_step"], r["step_tflops"], r["peak_tflops_datasheet"],
                           r["peak_tflops_measured"], r["mfu_datasheet"], r["mfu_measured"], r["hfu_datasheet"],
                           r["unstable"], r["mfu_flags"]])
    parts = [*notes, _figure(svg, caption) if svg else "", _details("utilization", _table(columns, table_rows, 4))]
    return _section("mfu", title, "", parts, bool(svg))


def _memory_section(data: _Data) -> _Section:
    title = "Memory: where a step's bytes go, against the device's capacity"
    rows = [r for r in data.memory if any(r[col] is not None for col, _, _ in MEMORY_PARTS)]
    if not rows:
        return _section("memory", title, "", [_note("Memory breakdown not recorded for this selection.")], False)
    svg, no_capacity = _memory_plot(rows, data)
    caption = ("Stacked: what the tensors themselves hold (medians over a configuration's trials, the "
               "memory_breakdown query): parameters, gradients, optimizer state, activations saved for backward, "
               "the bf16/fp16 weight copies autocast keeps, and the CUDA context NVML sees beside the allocator. "
               "The red line is the device's memory capacity; a diamond is the allocator's measured peak (CUDA). "
               "A capacity far beyond the bars is written, not drawn, so that the bars stay readable.")
    notes = [_note("No device capacity is recorded for " + ", ".join(no_capacity) + " (a CPU: the process shares "
                   "the host's memory); its bars are drawn without a limit. peak_rss_mib in the table is the whole "
                   "process's resident peak, Python and the libraries included.")] if no_capacity else []
    columns = ["GPU model", "configuration", "trials", *[name + " MiB" for _, name, _ in MEMORY_PARTS],
               "peak allocated MiB", "peak reserved MiB", "peak phase", "peak RSS MiB", "non-torch MiB",
               "capacity MiB", "used %", "allocator retries"]
    table = _table(columns, [[_panel_of(r), _label(data, r), r["trials"], *[r[col] for col, _, _ in MEMORY_PARTS],
                              r["peak_allocated_mib"], r["peak_reserved_mib"], r["peak_phase"], r["peak_rss_mib"],
                              r["non_torch_mib"], r["device_memory_mib"], r["used_pct"], r["alloc_retries"]]
                             for r in rows], 2)
    return _section("memory", title, "", [_figure(svg, caption), *notes, _details("memory_breakdown", table)], True)


def _ratio_section(data: _Data) -> _Section:
    title = "Backward / forward"
    rows = [r for r in data.ratios if r["ratio"] is not None]
    if not rows:
        return _section("ratio", title, "", [_note("No measured forward and backward in this selection.")], False)
    values = {(_label(data, r), _panel_of(r)): r["ratio"] for r in rows}
    svg = _grouped_bars(values, _ordered_labels(data, rows), "backward ms / forward ms (medians)",
                        ref=(TEXTBOOK_BACKWARD_FORWARD, "dense layers' textbook ratio (2)"), salt="ratio")
    caption = ("The median backward phase over the median forward phase, over the pooled measured steps (the "
               "backward_forward_ratio query). Near 2 is what dense layers cost (two matmuls back for one forward); "
               "far above points at recomputation, hooks or a slow kernel, below at a backward that skips work "
               "(frozen layers) or a forward that carries extra.")
    columns = ["GPU model", "configuration", "trials", "steps", "forward ms", "backward ms", "ratio"]
    table = _table(columns, [[_panel_of(r), _label(data, r), r["trials"], r["steps"], r["forward_ms"],
                              r["backward_ms"], r["ratio"]] for r in rows], 3)
    return _section("ratio", title, "", [_figure(svg, caption), _details("backward_forward_ratio", table)], True)


def _launch_section(data: _Data) -> _Section:
    title = "Launch-bound configurations"
    rows = [r for r in data.launch if r["host_device_ratio"] is not None]
    if not rows:
        return _section("launch", title, "", [_note(
            "No CUDA trial in this selection: launch-bound needs device time against host time, and a CPU trial "
            "has no device to wait for.")], False)
    values = {(_label(data, r), _panel_of(r)): r["host_device_ratio"] for r in rows}
    bound = {(_label(data, r), _panel_of(r)) for r in rows if r["launch_bound"]}
    svg = _grouped_bars(values, _ordered_labels(data, rows), "host ms / device ms of forward + loss + backward",
                        ref=(LAUNCH_THRESHOLD, f"launch-bound threshold ({LAUNCH_THRESHOLD})"), hatched=bound,
                        salt="launch")
    listed = sorted({f"{k[0]} on {k[1]}" for k in bound})
    caption = ("Host time over device time of forward, loss and backward (medians over the pooled measured steps, "
               "the launch_bound query). When the GPU is the bottleneck the host runs ahead and this is a fraction; "
               f"from {LAUNCH_THRESHOLD} on (hatched bars) the GPU waits for the host to launch each kernel: a "
               "bigger batch, fused kernels, CUDA graphs or torch.compile help more than a faster GPU. "
               + ("Launch bound: " + "; ".join(listed) + "." if listed else "No configuration here is launch bound."))
    columns = ["GPU model", "configuration", "trials", "median step ms", "GPU idle gap ms", "idle %",
               "device ms (fwd+loss+bwd)", "host ms (fwd+loss+bwd)", "host/device", "launch bound", "unstable"]
    table = _table(columns, [[_panel_of(r), _label(data, r), r["trials"], r["step_ms_p50"], r["gap_ms"],
                              r["idle_pct"], r["compute_device_ms"], r["compute_host_ms"], r["host_device_ratio"],
                              r["launch_bound"], r["unstable"]] for r in rows], 3)
    return _section("launch", title, "", [_figure(svg, caption), _details("launch_bound", table)], True)


def default_axis(data_or_configs) -> str | None:
    """The first of DEFAULT_AXES along which the configurations take two or more values."""
    configs = data_or_configs.configs if isinstance(data_or_configs, _Data) else data_or_configs
    for axis in DEFAULT_AXES:
        if len({getattr(c, axis) for c in configs if getattr(c, axis) is not None}) > 1:
            return axis
    return None


def _compare_section(con, data: _Data, by: str | None, baseline: str | None) -> _Section:
    title = "Side by side: ratios, intervals and verdicts"
    try:
        from stepscope.analysis.compare import compare
    except ImportError:  # the compare module lands with issue 11's first part
        return _section("compare", title, "", [_note("The compare table is not in this build "
                                                     "(stepscope.analysis.compare is missing).")], False)
    axis = by or default_axis(data)
    if axis is None:
        return _section("compare", title, "", [_note(
            "Nothing to compare: every configuration here ran on one GPU model, one device and one precision. "
            "Give --by AXIS (e.g. --by optimizer) to compare along another parameter.")], False)
    result = compare(con, by=axis, baseline=baseline, sweep=data.sweep)
    others = ", ".join(str(v) for v in result.values if v != result.baseline) or "no other value"
    intro = (f"Along {axis}: {others} against the baseline {result.baseline}, per configuration and metric (the "
             "compare command's figures). Ratio = the value's figure over the baseline's: for a time, above 1 is "
             "slower; for samples/s or MFU, above 1 is faster. The interval is the ratio's 95% bootstrap interval "
             "(over trials, or over blocks of steps where a side has few trials); p is the Mann-Whitney test's. "
             f"Verdict: same within ±{100 * result.min_effect:g}%; faster/slower (more/less for memory and energy) "
             "when p < 0.05 and the interval excludes 1; else unsure (more repeats would tell). A figure here is "
             "the median of those samples, so it may differ a little from the median step in the phase table.")
    parts = []
    svg = _compare_plot(result.summary, result.baseline) if result.summary else ""
    if svg:
        parts.append(_figure(svg, "Geometric mean of the ratios per value and metric, with its 95% interval; "
                                  "the counts of verdicts are in the table below."))
    if result.summary:
        columns = ["value", "metric", "configurations", "geomean ratio", "95% CI", "faster or less",
                   "slower or more", "same", "unsure"]
        parts.append(_table(columns, [[s["value"], s["metric"], s["configs"], s["geomean_ratio"],
                                       _interval(s["ci_low"], s["ci_high"]), s["faster_or_less"],
                                       s["slower_or_more"], s["same"], s["unsure"]] for s in result.summary], 3))
    if result.rows:
        stat_columns = ("metric", "baseline", "value", "baseline_value", "other_value", "ratio", "ci_low", "ci_high",
                        "p_value", "unit", "n_baseline", "n_other", "verdict")
        config_cols = [c for c in result.row_columns if c not in stat_columns]
        columns = [*config_cols, "metric", "value", "baseline figure", "figure", "ratio", "95% CI", "p", "over",
                   "n baseline / value", "verdict"]
        def cells(r):
            return [*[r.get(k) for k in config_cols], r["metric"], r["value"], r["baseline_value"], r["other_value"],
                    r["ratio"], _interval(r["ci_low"], r["ci_high"]), r["p_value"], r["unit"],
                    f"{r['n_baseline']} / {r['n_other']}", _Verdict(r["verdict"])]

        steps = [r for r in result.rows if r["metric"] == "step_ms"]
        if steps:
            parts.append(f"<h3>The median step, per configuration</h3>{_table(columns, map(cells, steps), 3)}")
        parts.append(_details(f"Every metric, per configuration ({len(result.rows)} rows)",
                              _table(columns, map(cells, result.rows), 3)))
    else:
        parts.append(_note(f"No configuration ran with both {result.baseline} and another {axis}: nothing to pair."))
    if result.environment:
        parts.append(_details("What else differs between them", _table(
            ["value", "field", "baseline's", "value's"],
            [[e["value"], e["field"], e["baseline"], e["other"]] for e in result.environment], 3), open_=True))
    return _section("compare", title, intro, parts, bool(svg))


_DEVICE_FIELDS = (
    ("device_name", "name"), ("gpu_variant", "GPU variant"), ("device_kind", "kind"), ("device_uuid", "UUID"),
    ("pci_bus_id", "PCI bus"), ("device_memory_bytes", "memory"), ("sm_count", "SMs"),
    ("compute_capability", "compute capability"), ("driver_version", "driver"),
    ("cuda_driver_version", "CUDA (driver)"), ("cuda_version", "CUDA (torch)"), ("cudnn_version", "cuDNN"),
    ("torch_version", "torch"), ("sm_clock_mhz", "SM clock MHz"), ("sm_clock_max_mhz", "SM clock max MHz"),
    ("mem_clock_mhz", "memory clock MHz"), ("mem_clock_max_mhz", "memory clock max MHz"),
    ("power_limit_w", "power limit W"), ("power_limit_default_w", "default power limit W"),
    ("ecc_enabled", "ECC"), ("mig_enabled", "MIG"), ("host", "host"), ("node_id", "Ray node"),
    ("cpu_model", "CPU"), ("cpu_count", "CPUs"), ("host_memory_bytes", "host memory"),
    ("nvml_unavailable", "NVML unavailable"), ("observed_at", "last seen"),
)


def _device_section(data: _Data) -> _Section:
    title = "Devices"
    if not data.devices:
        return _section("devices", title, "", [_note("No device rows for this selection.")], False)
    rows = []
    for field, name in _DEVICE_FIELDS:
        values = [d.get(field) for d in data.devices]
        if field.endswith("_bytes"):
            values = [None if v is None else f"{v / 2**30:,.1f} GiB ({v:,} bytes)" for v in values]
        else:  # as stored: a clock or a power limit is no figure to align
            values = [v if v is None or isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)
                      for v in values]
        rows.append([name, *values])
    columns = ["", *[f"device {i + 1}" for i in range(len(data.devices))]]
    intro = "Each device the trials ran on, exactly as it was seen (the devices view: its last observation)."
    return _section("devices", title, intro, [_table(columns, rows, 3, first_is_header=True)], False)


def _sweep_section(data: _Data) -> _Section:
    title = "Sweep specs"
    parts = []
    for s in data.sweeps:
        meta = (f"created {s['created_at']}, {s['trial_count']} trials, isolation {s['isolation']}, from "
                f"{s['spec_path']} on {s['host']}, stepscope {s['stepscope_version']}")
        parts.append(f'<h3 class="mono">{html.escape(str(s["sweep_id"]))}</h3>{_p(meta)}<pre>{html.escape(s["spec"] or "")}</pre>')
    if not parts:
        parts.append(_note("No sweeps row for this selection (`stepscope store check` says why)."))
    return _section("sweeps", title, "", parts, False)


def _heading(data: _Data, store: str | None, sections: Sequence[_Section]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(data.status_counts.items()))
    sweeps = ", ".join(s["sweep_id"] for s in data.sweeps) or "none"
    panels = sorted({c.panel for c in data.configs})
    lines = [
        f"Store: {store}" if store else "",
        f"Sweep{'s' if len(data.sweeps) != 1 else ''}: {sweeps} (--sweep {data.sweep})",
        f"Trials: {counts or 'none'}; {len(data.configs)} configurations on {', '.join(panels) or 'no device'}.",
    ]
    nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    not_ok = ""
    if data.not_ok:
        not_ok = _details(f"{len(data.not_ok)} trial(s) that did not end ok", _table(
            ["sweep", "trial", "status", "error", "workload", "batch size", "precision", "device"],
            [[t["sweep_id"], t["trial_id"], t["status"], t["error"], t["workload"], t["batch_size"], t["precision"],
              t["device_name"]] for t in data.not_ok], 3))
    return (f"<header><h1>stepscope report</h1>{''.join(_p(x) for x in lines if x)}{not_ok}"
            f"<nav><ol>{nav}</ol></nav></header>\n")


def _label(data: _Data, row: dict) -> str:
    key = _row_key(row)
    return data.labels.get(key) or f"{row['workload']} bs={row['batch_size']} {row['precision']}"


def _ordered_labels(data: _Data, rows: Sequence[dict]) -> list[str]:
    """The labels of `rows`' configurations in the report's order (workload, batch size, precision)."""
    order = {data.labels[c.key]: i for i, c in enumerate(data.configs)}
    return sorted({_label(data, r) for r in rows}, key=lambda label: (order.get(label, len(order)), label))


def _panel_of(row: dict) -> str:
    return row.get("gpu_model") or row.get("device_name") or "unknown device"


# ---------------------------------------------------------------- plots


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def _svg(fig: Figure, salt: str) -> str:
    """`fig` as inline SVG text: no XML prologue or metadata, ids salted per figure (so two
    figures' clip paths never share an id in one page), no date: the same figure gives the
    same text."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"stepscope-{salt}", "svg.id": f"fig-{salt}", **_STYLE}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    return text.strip()


def _fig(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _phase_plot(configs: Sequence[Config], data: _Data) -> str:
    with _style():
        panels = sorted({c.panel for c in configs})
        workloads = sorted({c.workload for c in configs})
        rows = {w: list(dict.fromkeys(data.labels[c.key] for c in configs if c.workload == w)) for w in workloads}
        heights = [len(rows[w]) for w in workloads]
        fig = _fig(11, 0.3 * sum(heights) + 0.75 * len(workloads) + 0.9)
        axes = fig.subplots(len(workloads), len(panels), squeeze=False, sharey="row", sharex="row",
                            gridspec_kw={"height_ratios": heights})
        for i, w in enumerate(workloads):
            row_max = 0.0
            for j, panel in enumerate(panels):
                ax = axes[i][j]
                labels = rows[w]
                ax.set_yticks(range(len(labels)), labels)
                ax.set_ylim(len(labels) - 0.5, -0.5)
                ax.grid(axis="y", visible=False)
                if i == 0:
                    ax.set_title(panel, fontweight="bold")
                for c in configs:
                    if c.workload != w or c.panel != panel:
                        continue
                    y = labels.index(data.labels[c.key])
                    f = data.figures[c.key]
                    left = 0.0
                    for p in PHASES:
                        ms = f.phases.get(p) or 0.0
                        ax.barh(y, ms, left=left, height=0.62, color=PHASE_COLORS[p], linewidth=0)
                        left += ms
                    end = left
                    if f.step_ms is not None:
                        lo, hi = f.ci if f.ci else (f.step_ms, f.step_ms)
                        ax.errorbar(f.step_ms, y, xerr=[[max(f.step_ms - lo, 0)], [max(hi - f.step_ms, 0)]],
                                    fmt="|", color="black", markersize=12, capsize=3, elinewidth=1)
                        end = max(end, hi)
                        ax.annotate(f"{_short(f.step_ms)} ms", (end, y), xytext=(4, 0), textcoords="offset points",
                                    va="center", fontsize=8)
                    row_max = max(row_max, end)
            axes[i][0].set_xlim(0, row_max * 1.22 or 1)
        for ax in axes[-1]:
            ax.set_xlabel("ms per step")
        handles = [Patch(color=PHASE_COLORS[p], label=p) for p in PHASES]
        handles.append(Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                              label="median step, 95% CI"))
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
        return _svg(fig, "phases")


def _throughput_plot(rows: Sequence[dict]) -> str:
    with _style():
        workloads = sorted({r["workload"] for r in rows})
        ncols = min(3, len(workloads))
        nrows = math.ceil(len(workloads) / ncols)
        fig = _fig(11, 3.1 * nrows + 0.3)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        panels = sorted({_panel_of(r) for r in rows})
        colors = {p: _OKABE_ITO[i % len(_OKABE_ITO)] for i, p in enumerate(panels)}
        several_sweeps = len({r["sweep_id"] for r in rows}) > 1
        for ax, w in zip(axes.flat, workloads, strict=False):
            series: dict[tuple, list[dict]] = {}
            for r in rows:
                if r["workload"] == w:
                    series.setdefault((_panel_of(r), r["precision"], r["sweep_id"], r["series"]), []).append(r)
            per_line = {}
            for k in series:
                per_line.setdefault(k[:2], []).append(k)
            batches = sorted({r["batch_size"] for r in rows if r["workload"] == w})
            for key in sorted(series, key=lambda k: (k[0], _precision_rank(k[1]), k[2], k[3])):
                points = sorted(series[key], key=lambda r: r["batch_size"])
                panel, precision, sweep_id, series_id = key
                label = f"{panel} · {precision}"
                if several_sweeps:
                    label += f" · {sweep_id}"
                if len(per_line[key[:2]]) > 1 and not several_sweeps:
                    label += f" · series {series_id}"
                xs = [r["batch_size"] for r in points]
                ys = [r["samples_per_s_p50"] for r in points]
                style = _PRECISION_LINES.get(precision, "-")
                marker = _PRECISION_MARKERS.get(precision, "o")
                ax.plot(xs, ys, linestyle=style, marker=marker, color=colors[panel], label=label, linewidth=1.6,
                        markersize=5)
                shaky = [(x, y) for x, y, r in zip(xs, ys, points, strict=True) if r["unstable"]]
                if shaky:
                    ax.plot(*zip(*shaky, strict=True), linestyle="none", marker=marker, markersize=9, markerfacecolor="white",
                            markeredgecolor=colors[panel], zorder=3)
            ax.set_title(w, fontweight="bold")
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_xlabel("batch size")
            ax.set_ylabel("samples/s (median step)")
            ax.legend(fontsize=7, loc="best")
        for ax in list(axes.flat)[len(workloads):]:
            ax.set_visible(False)
        return _svg(fig, "throughput")


def _mfu_plot(rows: Sequence[dict], bases: Sequence[tuple[str, str]], data: _Data) -> str:
    configs = [data.config(_row_key(r)) for r in rows]
    known = [c for c in configs if c is not None]
    row_labels_of = config_labels(known, omit=("precision",))
    with _style():
        def row_label(r, c):
            return row_labels_of[c.key] if c else f"{r['workload']} bs={r['batch_size']}"

        ordered = sorted(zip(rows, configs, strict=True), key=lambda rc: _sort_key(rc[1]) if rc[1] else ((rc[0]["workload"],),))
        ylabels = list(dict.fromkeys(row_label(r, c) for r, c in ordered))
        columns = sorted({(_panel_of(r), r["precision"]) for r in rows}, key=lambda k: (k[0], _precision_rank(k[1])))
        width = min(11, 1.6 + 1.5 * len(ylabels[0]) / 12 + 1.0 * len(columns) * len(bases))
        fig = _fig(max(width, 5.5), 0.38 * len(ylabels) + 1.6)
        axes = fig.subplots(1, len(bases), squeeze=False)[0]
        for ax, (col, name) in zip(axes, bases, strict=True):
            values = np.full((len(ylabels), len(columns)), np.nan)
            flagged = np.zeros(values.shape, dtype=bool)
            for r, c in ordered:
                i, j = ylabels.index(row_label(r, c)), columns.index((_panel_of(r), r["precision"]))
                if r[col] is not None:
                    values[i, j] = 100 * r[col]
                    flagged[i, j] = bool(r["mfu_flags"])
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
            top = np.nanmax(values) if np.isfinite(values).any() else 1.0
            # pcolormesh, not imshow: vector cells (imshow embeds a PNG in the SVG).
            ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=top or 1.0,
                                  edgecolors="white", linewidth=1)
            for (i, j), v in np.ndenumerate(values):
                text = "not\nrecorded" if not np.isfinite(v) else f"{_pct(v)}{'*' if flagged[i, j] else ''}"
                dark = np.isfinite(v) and v < 0.6 * (top or 1.0)
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7 if not np.isfinite(v) else 8,
                        color="white" if dark else "#333333")
            ax.set_xticks(np.arange(len(columns)) + 0.5, [f"{p}\n{q}" for p, q in columns])
            ax.set_yticks(np.arange(len(ylabels)) + 0.5, ylabels)
            ax.set_ylim(len(ylabels), 0)
            ax.tick_params(length=0)
            ax.spines[:].set_visible(False)
            ax.grid(False)
            ax.set_title(f"MFU % {name}")
        return _svg(fig, "mfu")


def _memory_plot(rows: Sequence[dict], data: _Data) -> tuple[str, list[str]]:
    panels = sorted({_panel_of(r) for r in rows})
    parts = [p for p in MEMORY_PARTS if any((r[p[0]] or 0) > 0 for r in rows)]
    no_capacity = []
    with _style():
        heights = [sum(1 for r in rows if _panel_of(r) == p) for p in panels]
        fig = _fig(11, 0.32 * sum(heights) + 0.85 * len(panels) + 0.9)
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        peak_seen = False
        for ax, panel in zip(axes, panels, strict=True):
            mine = sorted((r for r in rows if _panel_of(r) == panel),
                          key=lambda r: _sort_key(data.config(_row_key(r))) if data.config(_row_key(r)) else ())
            stacks = [sum(r[col] or 0 for col, _, _ in parts) for r in mine]
            peaks = [r["peak_allocated_mib"] for r in mine]
            capacity = max((r["device_memory_mib"] for r in mine if r["device_memory_mib"]), default=None)
            top = max([*stacks, *(p for p in peaks if p is not None)] or [1.0])
            draw_capacity = capacity is not None and capacity <= 4 * top
            scale_top = max(top, capacity if draw_capacity else 0)
            unit, div = ("GiB", 1024.0) if scale_top >= 2048 else ("MiB", 1.0)
            labels = [_label(data, r) for r in mine]
            for y, r in enumerate(mine):
                left = 0.0
                for col, _, color in parts:
                    v = (r[col] or 0) / div
                    ax.barh(y, v, left=left, height=0.62, color=color, linewidth=0)
                    left += v
                if r["peak_allocated_mib"] is not None:
                    ax.plot(r["peak_allocated_mib"] / div, y, marker="d", color="black", markersize=6)
                    peak_seen = True
            ax.set_yticks(range(len(labels)), labels)
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
            ax.set_title(panel, fontweight="bold", loc="left")
            ax.set_xlabel(unit)
            if capacity is None:
                no_capacity.append(panel)
                ax.set_xlim(0, top / div * 1.1 or 1)
            elif draw_capacity:
                ax.axvline(capacity / div, color="#c0392b", linewidth=1.5)
                ax.annotate(f"capacity {_short(capacity / div)} {unit}", (capacity / div, 0), xycoords=("data", "axes fraction"),
                            xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", color="#c0392b",
                            fontsize=8)
                ax.set_xlim(0, capacity / div * 1.05)
            else:
                ax.set_xlim(0, top / div * 1.1)
                ax.text(0.99, 0.02, f"capacity {_short(capacity / 1024)} GiB: off this scale "
                                    f"(the largest bar is {100 * top / capacity:.2g}% of it)",
                        transform=ax.transAxes, ha="right", va="bottom", color="#c0392b", fontsize=8)
        handles = [Patch(color=color, label=name) for _, name, color in parts]
        if peak_seen:
            handles.append(Line2D([], [], color="black", marker="d", linestyle="none", label="peak allocated"))
        if any(r["device_memory_mib"] for r in rows):
            handles.append(Line2D([], [], color="#c0392b", label="device capacity"))
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
        return _svg(fig, "memory"), no_capacity


def _grouped_bars(values: dict[tuple[str, str], float], order: Sequence[str], xlabel: str,
                  ref: tuple[float, str] | None = None, hatched: set | frozenset = frozenset(), salt: str = "") -> str:
    """Horizontal bars: a group per label (in `order`), a bar per GPU model in it."""
    labels = list(dict.fromkeys(order))
    panels = sorted({p for _, p in values})
    colors = {p: _OKABE_ITO[i % len(_OKABE_ITO)] for i, p in enumerate(panels)}
    with _style():
        bar = 0.8 / len(panels)
        fig = _fig(11, max(1.6, (0.12 + 0.15 * len(panels)) * len(labels) + 1.1))
        ax = fig.subplots()
        top = max([*values.values(), ref[0] if ref else 0])
        for j, panel in enumerate(panels):
            for i, label in enumerate(labels):
                v = values.get((label, panel))
                if v is None:
                    continue
                y = i - 0.4 + bar * (j + 0.5)
                ax.barh(y, v, height=bar * 0.9, color=colors[panel], hatch="///" if (label, panel) in hatched else None,
                        edgecolor="white" if (label, panel) in hatched else None, linewidth=0,
                        label=panel if i == next(k for k, lb in enumerate(labels) if (lb, panel) in values) else None)
                ax.annotate(f"{v:.2f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        if ref:
            ax.axvline(ref[0], color="#444444", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, top * 1.15 or 1)
        ax.set_xlabel(xlabel)
        handles = [Patch(color=colors[p], label=p) for p in panels]
        if hatched:
            handles.append(Patch(facecolor="#888888", hatch="///", edgecolor="white", label="launch bound"))
        if ref:  # in the legend, not on the plot: a label there would sit on the bars' figures
            handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1, label=ref[1]))
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
        return _svg(fig, salt)


def _compare_plot(summary: Sequence[dict], baseline: str) -> str:
    rows = [s for s in summary if s.get("geomean_ratio") is not None]
    if not rows:
        return ""
    with _style():
        fig = _fig(11, 0.28 * len(rows) + 1.2)
        ax = fig.subplots()
        labels = [f"{s['value']} · {s['metric']}" for s in rows]
        for y, s in enumerate(rows):
            r = s["geomean_ratio"]
            lo = s["ci_low"] if s["ci_low"] is not None else r
            hi = s["ci_high"] if s["ci_high"] is not None else r
            ax.errorbar(r, y, xerr=[[max(r - lo, 0)], [max(hi - r, 0)]], fmt="o", color="#0072B2", capsize=3,
                        markersize=4)
        ax.axvline(1.0, color="#444444", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        # Ticks at powers of two, as plain numbers (the log axis's default labels are mathtext,
        # which _STYLE turns off, and a range within one decade would get a single label).
        ends = [v for s in rows for v in (s["ci_low"], s["ci_high"], s["geomean_ratio"]) if v]
        low, high = math.floor(math.log2(min([*ends, 1.0]))), math.ceil(math.log2(max([*ends, 1.0])))
        stride = 1 + (high - low) // 8  # at most ~8 labels
        ticks = [2.0**k for k in range(low, high + 1) if (k - low) % stride == 0 or k == 0]
        ax.set_xticks(ticks, [f"{t:g}" if t >= 1 else f"1/{1 / t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(2.0**low / 1.1, 2.0**high * 1.1)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"geometric mean ratio to {baseline} (log scale; 1 = the same)")
        return _svg(fig, "compare")


# ---------------------------------------------------------------- html


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0; } h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 4px; } h3.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
header p { margin: 2px 0; color: #444; } nav ol { columns: 2; margin: 10px 0; }
figure { margin: 8px 0; } svg { max-width: 100%; height: auto; display: block; }
figcaption, .note { color: #555; font-size: 13px; max-width: 1000px; }
.note { background: #f6f6f6; border-left: 3px solid #bbb; padding: 6px 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { border-bottom: 1px solid #e6e6e6; padding: 3px 8px; text-align: left; vertical-align: top;
         white-space: nowrap; }
th { background: #fafafa; position: sticky; top: 0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr th:first-child.row { background: #fafafa; }
details { margin: 6px 0; } summary { cursor: pointer; color: #0b5394; }
pre { background: #f7f7f7; padding: 10px; font-size: 12px; overflow-x: auto; }
.v-faster, .v-less { color: #1e7b34; font-weight: 600; } .v-slower, .v-more { color: #b3261e; font-weight: 600; }
.v-same { color: #555; } .v-unsure { color: #9a6700; }
@media print { details { display: block; } h2 { break-after: avoid; } figure { break-inside: avoid; } }
"""


def _page(body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>stepscope report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _details(summary: str, inner: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>{inner}</details>"


@dataclass(frozen=True, slots=True)
class _Verdict:
    text: str | None


def _table(columns: Sequence[str], rows: Iterable[Sequence], digits: int, first_is_header: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            if first_is_header and i == 0:
                cells.append(f'<th class="row">{html.escape(str(v))}</th>')
            elif isinstance(v, _Verdict):
                cells.append(f'<td class="v-{html.escape(v.text or "none")}">{html.escape(v.text or "—")}</td>')
            elif isinstance(v, bool) or v is None or isinstance(v, str):
                cells.append(f"<td>{html.escape(_fmt(v, digits))}</td>")
            else:
                cells.append(f'<td class="n">{html.escape(_fmt(v, digits))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _fmt(v, digits: int = 3) -> str:
    """A cell's text: — for null, yes/no, integers with thousands separators, floats with
    `digits` decimals (trailing zeros kept: a column reads aligned)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.{digits if abs(v) < 1e5 else 0}f}"
    return str(v)


def _interval(lo, hi) -> str | None:
    if lo is None or hi is None:
        return None
    return f"{_short(lo)} – {_short(hi)}"


def _short(v: float) -> str:
    """Three significant figures at most (trailing zeros dropped), no exponent."""
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    text = f"{v:,.{max(0, 2 - magnitude)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _pct(v: float) -> str:
    return f"{v:.2g}%" if v < 10 else f"{v:.0f}%"


def _precision_rank(p: str) -> int:
    return PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)
