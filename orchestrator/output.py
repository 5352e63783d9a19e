"""Rows out: one `--format` option for every command that prints rows (table, csv,
json, markdown), implemented once."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import sys
from collections.abc import Sequence

import click

FORMATS = ("table", "csv", "json", "markdown")


def output_options(fn):
    """Add `--format` to a command; the default is a table on a terminal, CSV in a pipe."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table on a terminal, csv otherwise).",
    )(fn)


def render(columns: Sequence[str], rows: Sequence[Sequence], fmt: str | None) -> str:
    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
        return buf.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([dict(zip(columns, map(_json, row), strict=True)) for row in rows], indent=2)
    cells = [[_short(v) for v in row] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    return _table(columns, cells, rows)


def _table(columns: Sequence[str], cells: list[list[str]], rows: Sequence[Sequence]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    body = [line(columns), sep, *(line(r) for r in cells)]
    body.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(body)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)


def _short(v: object) -> str:
    """Human-readable cell: floats to 4 significant digits, no scientific noise."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) >= 1e-3 else f"{v:.3e}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _plain(v: object) -> object:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return "" if v is None else v


def _json(v: object) -> object:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, dict):  # a DuckDB struct or map, e.g. ok_trials.config
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):  # a DuckDB list
        return [_json(x) for x in v]
    return str(v)
