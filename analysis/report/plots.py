"""The report's plots: matplotlib figures drawn to static SVG text (module docstring of
`stepscope.analysis.report`: why), with one style and colour-blind-safe colours."""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from stepscope.analysis.keys import ConfigKey
from stepscope.analysis.report.data import (
    ReportData,
    _label,
    _panel_of,
    _precision_rank,
    _row_key,
    _sort_key,
    config_labels,
)
from stepscope.analysis.report.html import _pct, _short
from stepscope.storage.schema import PHASES
from stepscope.workloads.params import PRECISIONS

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


def _phase_plot(configs: Sequence[ConfigKey], data: ReportData) -> str:
    with _style():
        panels = sorted({c.panel for c in configs})
        workloads = sorted({c.workload for c in configs})
        rows = {w: list(dict.fromkeys(data.labels[c.row_key] for c in configs if c.workload == w)) for w in workloads}
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
                    y = labels.index(data.labels[c.row_key])
                    f = data.figures[c.row_key]
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


def _mfu_plot(rows: Sequence[dict], bases: Sequence[tuple[str, str]], data: ReportData) -> str:
    configs = [data.config(_row_key(r)) for r in rows]
    known = [c for c in configs if c is not None]
    row_labels_of = config_labels(known, omit=("precision",))
    with _style():
        def row_label(r, c):
            return row_labels_of[c.row_key] if c else f"{r['workload']} bs={r['batch_size']}"

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


def _memory_plot(rows: Sequence[dict], data: ReportData) -> tuple[str, list[str]]:
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
