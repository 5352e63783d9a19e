"""The report's entry points: render the page (`render_report`), and write it atomically
where --out says (`write_report`, `check_out_path`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import duckdb

from stepscope.analysis.compare import SWEEP_AXES
from stepscope.analysis.report.data import ReportData
from stepscope.analysis.report.html import _page
from stepscope.analysis.report.sections import (
    _compare_section,
    _device_section,
    _heading,
    _launch_section,
    _memory_section,
    _mfu_section,
    _phase_section,
    _ratio_section,
    _sweep_section,
    _throughput_section,
)
from stepscope.analysis.sweeps import default_for, resolve
from stepscope.errors import Field, StepscopeError

#: Where `write_report` writes, as its errors name it (its parameter `out_path`).
OUT_PATH = Field("out_path")


class ReportError(StepscopeError):
    """The report cannot be written where asked (`out_path`), or the selection is wrong."""


@dataclass(frozen=True, slots=True)
class ReportInfo:
    """What `write_report` wrote: `path` (absolute), `size_bytes`, and per section
    (its id) whether it holds a plot."""

    path: str
    size_bytes: int
    plots: dict[str, bool]


def write_report(
    con: duckdb.DuckDBPyConnection,
    out_path: str,
    *,
    sweep: str | None = None,
    by: str | None = None,
    baseline: str | None = None,
    store: str | None = None,
) -> ReportInfo:
    """Render the report for the store behind `con` and write it to `out_path` atomically
    (a temporary file in the same folder, then renamed over it).

    `sweep`: which sweeps (`stepscope.analysis.sweeps`: ids, names, 'latest', 'all',
    comma-separated); None, the default: the latest sweep, but every sweep when the compare
    section's axis is the sweep (`by='sweep'`). `by`, `baseline`: the compare section's axis and
    baseline value (default axis: the first of DEFAULT_AXES with two or more values);
    `store`: the store's location, shown in the heading.
    Raises ReportError for an `out_path` that cannot be written (check_out_path), SweepError for
    an unknown sweep, and what `compare` raises for a bad axis or baseline.
    """
    path = check_out_path(out_path)
    text, plots = render_report(con, sweep=sweep, by=by, baseline=baseline, store=store)
    data = text.encode("utf-8")
    folder = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stepscope-report-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ReportError(OUT_PATH, f" {out_path}: cannot write in {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for others to read
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ReportError(OUT_PATH, f" {out_path}: cannot write it: {exc.strerror or exc}") from None
    return ReportInfo(path, len(data), plots)


def check_out_path(out_path: str) -> str:
    """The absolute path to write the report to, or ReportError naming `out_path` and the fix:
    its folder must exist and be writable, and the path must not be a folder."""
    path = os.path.abspath(os.path.expanduser(out_path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ReportError(OUT_PATH, f" {out_path}: is a folder; give a file name such as {os.path.join(out_path, 'report.html')}")
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ReportError(OUT_PATH, f" {out_path}: the folder {folder} {what}; create it or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReportError(OUT_PATH, f" {out_path}: cannot write in the folder {folder} (permission denied); write elsewhere")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ReportError(OUT_PATH, f" {out_path}: the file exists and is read-only; remove it or write elsewhere")
    return path


def render_report(
    con: duckdb.DuckDBPyConnection,
    *,
    sweep: str | None = None,
    by: str | None = None,
    baseline: str | None = None,
    store: str | None = None,
) -> tuple[str, dict[str, bool]]:
    """The report's HTML text, and per section id whether it holds a plot (see write_report,
    which says what `sweep` selects)."""
    text = default_for(sweep, by_sweep=by in SWEEP_AXES)
    data = ReportData.load(con, text, resolve(con, text))
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
