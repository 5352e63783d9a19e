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

Every figure comes from SQL, never re-derived in Python: the named queries' own columns
(queries/*.sql, printed beside each plot), and the report's own selections in
queries/report/*.sql (its configurations, status counts, devices, sweeps, and per
configuration the phases' medians). The stacked phases are each phase's median over the
configuration's trials of the trial's median (trial_summaries.p50; the figure
config_step_stats' step_ms_p50 is for the whole step); only the median step's interval is
computed here, by `stepscope.analysis.stats.median_ci`, the statistics compare uses.

Why matplotlib, rendered to static SVG and inlined: the file opens offline, with no JavaScript
and nothing fetched; it prints; the same store gives the same bytes (fixed `svg.hashsalt`, no
date, a fixed bootstrap seed); text stays text (`svg.fonttype = 'none'`), so it is small and
searchable; and it is one well-kept dependency that the rest of the analysis layer can use too.
An interactive bundle was rejected for its size: plotly's offline HTML inlines all of plotly.js,
~3.5 MB in every file (`include_plotlyjs=True`, https://plotly.com/python/interactive-html-export/). `matplotlib.figure.Figure` is used directly, never pyplot: no global
figure manager, no GUI backend, nothing left open.

Which sweeps: `--sweep` as everywhere (`stepscope.analysis.sweeps`), the latest by default.
The package: `data` (what the sections read, fetched once), `sections`, `plots`, `html`
(the page's pieces), `render` (the entry points).
"""

from stepscope.analysis.report.data import DEFAULT_AXES, ReportData, config_labels, default_axis
from stepscope.analysis.report.render import (
    ReportError,
    ReportInfo,
    check_out_path,
    render_report,
    write_report,
)
from stepscope.analysis.stats import median_ci

__all__ = [
    "DEFAULT_AXES", "ReportData", "ReportError", "ReportInfo", "check_out_path", "config_labels", "default_axis",
    "median_ci", "render_report", "write_report",
]
