"""The report's sections, in page order: each a title, an introduction, its plot and its
tables (the named queries' columns, printed beside each plot), and the page's heading."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stepscope.analysis.compare import compare
from stepscope.analysis.report.data import (
    ReportData,
    _label,
    _ordered_labels,
    _panel_of,
    _row_key,
    default_axis,
)
from stepscope.analysis.report.html import (
    _details,
    _figure,
    _fmt,
    _interval,
    _note,
    _p,
    _table,
    _Verdict,
)
from stepscope.analysis.report.plots import (
    MEMORY_PARTS,
    _compare_plot,
    _grouped_bars,
    _memory_plot,
    _mfu_plot,
    _phase_plot,
    _throughput_plot,
)
from stepscope.analysis.stats import BOOTSTRAP_RESAMPLES, MIN_TRIALS, SEED
from stepscope.storage.schema import PHASES

#: Backward/forward ratio of dense layers: backward computes two matmuls (the gradients of the
#: input and of the weight) per forward matmul. Kaplan et al., "Scaling Laws for Neural Language
#: Models" (2020), section 2.1, https://arxiv.org/abs/2001.08361: C_backward ~= 2 C_forward.
TEXTBOOK_BACKWARD_FORWARD = 2.0
#: The launch_bound query's default threshold (queries/launch_bound.sql).
LAUNCH_THRESHOLD = 0.9


@dataclass(frozen=True, slots=True)
class _Section:
    id: str
    title: str
    html: str
    has_plot: bool


def _section(sid: str, title: str, intro: str, parts: Iterable[str], has_plot: bool) -> _Section:
    body = f'<section id="{sid}"><h2>{html.escape(title)}</h2>{_p(intro) if intro else ""}{"".join(parts)}</section>\n'
    return _Section(sid, title, body, has_plot)


def _phase_section(data: ReportData) -> _Section:
    title = "Where a step's time goes"
    configs = [c for c in data.configs if c.row_key in data.figures]
    if not configs:
        return _section("phases", title, "", [_note("No ok trial with a whole measured step in this selection.")],
                        False)
    svg = _phase_plot(configs, data)
    units = sorted({f.ci_unit for f in data.figures.values() if f.ci_unit})
    caption = (
        "Each bar stacks the six phases' medians (ms): per configuration, the median over its ok trials of each "
        "trial's median phase time (trial_summaries.p50). The black tick is the median step (config_step_stats."
        "step_ms_p50: the median of the trials' median steps), its whisker that median's 95% percentile-bootstrap "
        f"interval ({BOOTSTRAP_RESAMPLES} resamples, seed {SEED}) over the configuration's trials when it has {MIN_TRIALS} or more, "
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
        f = data.figures[c.row_key]
        ci = f"{_fmt(f.ci[0], 3)} – {_fmt(f.ci[1], 3)}" if f.ci else None
        rows.append([c.panel, data.labels[c.row_key], f.trials, *[f.phases.get(p) for p in PHASES],
                     sum(f.phases.values()), f.step_ms, ci, f.ci_unit or None])
    return _section("phases", title, "", [_figure(svg, caption), _details("Phase medians", _table(columns, rows, 3))],
                    True)


def _throughput_section(data: ReportData) -> _Section:
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


def _mfu_section(data: ReportData) -> _Section:
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


def _memory_section(data: ReportData) -> _Section:
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


def _ratio_section(data: ReportData) -> _Section:
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


def _launch_section(data: ReportData) -> _Section:
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


def _compare_section(con, data: ReportData, by: str | None, baseline: str | None) -> _Section:
    title = "Side by side: ratios, intervals and verdicts"
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


def _device_section(data: ReportData) -> _Section:
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


def _sweep_section(data: ReportData) -> _Section:
    title = "Sweep specs"
    parts = []
    for s in data.sweeps:
        meta = (f"created {s['created_at']}, {s['trial_count']} trials, isolation {s['isolation']}, from "
                f"{s['spec_path']} on {s['host']}, stepscope {s['stepscope_version']}")
        parts.append(f'<h3 class="mono">{html.escape(str(s["sweep_id"]))}</h3>{_p(meta)}<pre>{html.escape(s["spec"] or "")}</pre>')
    if not parts:
        parts.append(_note("No sweeps row for this selection (`stepscope store check` says why)."))
    return _section("sweeps", title, "", parts, False)


def _heading(data: ReportData, store: str | None, sections: Sequence[_Section]) -> str:
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
