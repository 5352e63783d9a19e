"""Rows out: one set of output options for every command that prints rows (`--format`
table, csv, json, markdown, and `--max-rows`), implemented once.

Rows arrive in batches and csv, json and markdown are written as they come, so memory
stays bounded whatever the row count. A table needs its rows to size its columns, so it
shows at most `DEFAULT_MAX_ROWS` of them unless told otherwise, and says when there were more.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence

import click

FORMATS = ("table", "csv", "json", "markdown")
#: Rows the table format shows by default: a terminal's worth many times over, bounded
#: (a table is sized from its rows, so they are all held). csv, json and markdown stream.
DEFAULT_MAX_ROWS = 1000
MORE_ROWS = "more not shown: use --max-rows 0 for all, or --format csv"


def output_options(fn):
    """Add `--format` and `--max-rows` to a command; the default format is a table on a
    terminal, CSV in a pipe."""
    fn = click.option(
        "--max-rows",
        "max_rows",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help=f"Print at most N rows; 0 for all (default: {DEFAULT_MAX_ROWS} in a table, "
        "every row in csv, json and markdown, which stream).",
    )(fn)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table on a terminal, csv otherwise).",
    )(fn)


def render(columns: Sequence[str], rows: Sequence[Sequence], fmt: str | None) -> str:
    """`rows` (every one of them) as text in `fmt`, without a final newline."""
    buf = io.StringIO()
    write_rows(columns, [rows], fmt, max_rows=0, out=buf.write)
    return buf.getvalue().removesuffix("\n")


def write_rows(columns: Sequence[str], batches: Iterable[Sequence[Sequence]], fmt: str | None,
               max_rows: int | None = None, out=None) -> None:
    """Write the rows of `batches` in `fmt` to `out` (a function taking text; stdout by
    default), batch by batch. `max_rows`: at most that many rows (0 or None in csv, json,
    markdown: all; None in a table: `DEFAULT_MAX_ROWS`); when more were left, the table
    says so in its last line, and the other formats on stderr (their output stays valid)."""
    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    out = out or (lambda text: click.echo(text, nl=False))
    if fmt == "table":
        limit = DEFAULT_MAX_ROWS if max_rows is None else max_rows
        rows, more = _take(batches, limit)
        out(_table(columns, [[_short(v) for v in row] for row in rows], rows, more) + "\n")
        return
    limited = _limited(batches, max_rows or 0)
    if fmt == "csv":
        _write_csv(columns, limited, out)
    elif fmt == "json":
        _write_json(columns, limited, out)
    else:
        _write_markdown(columns, limited, out)
    if limited.more:
        click.echo(f"Note: stopped after {max_rows} rows (--max-rows {max_rows}); more rows not shown", err=True)


def _write_csv(columns: Sequence[str], batches: Iterable[Sequence[Sequence]], out) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for batch in batches:
        writer.writerows(_plain_rows(batch))
        out(buf.getvalue())  # one write per batch: a write per row is several times slower
        buf.seek(0)
        buf.truncate()
    out(buf.getvalue())


def _plain_rows(batch: Sequence[Sequence]) -> Sequence[Sequence]:
    """The batch as csv writes it: dates in ISO form (csv writes None as "" by itself).
    A column holds one type, so its first non-null value says whether it has dates; most
    batches have none and are written as they are (converting every value is slow)."""
    width = len(batch[0]) if batch else 0
    firsts = (next((row[i] for row in batch if row[i] is not None), None) for i in range(width))
    if not any(isinstance(v, dt.date) for v in firsts):
        return batch
    return [[_plain(v) for v in row] for row in batch]


def _write_json(columns: Sequence[str], batches: Iterable[Sequence[Sequence]], out) -> None:
    """The text `json.dumps(list_of_objects, indent=2)` gives, an object at a time."""
    first = True
    for batch in batches:
        parts = []
        for row in batch:
            text = json.dumps(dict(zip(columns, map(_json, row), strict=True)), indent=2)
            parts.append(("[\n" if first else ",\n") + "  " + text.replace("\n", "\n  "))
            first = False
        out("".join(parts))
    out("[]\n" if first else "\n]\n")


def _write_markdown(columns: Sequence[str], batches: Iterable[Sequence[Sequence]], out) -> None:
    out("| " + " | ".join(columns) + " |\n" + "|" + "|".join("---" for _ in columns) + "|\n")
    for batch in batches:
        out("".join("| " + " | ".join(_short(v).replace("|", "\\|") for v in row) + " |\n" for row in batch))


class _limited:
    """The batches, cut after `limit` rows (0: all); then `more` says whether rows were
    left. Reads one batch past the limit at most, never the rest: counting the rows left
    could cost as much as printing them."""

    def __init__(self, batches: Iterable[Sequence[Sequence]], limit: int) -> None:
        self.batches, self.limit, self.more = batches, limit, False

    def __iter__(self) -> Iterator[Sequence[Sequence]]:
        shown = 0
        for batch in self.batches:
            if self.limit and shown + len(batch) > self.limit:
                yield batch[: self.limit - shown]
                self.more = True
                return
            shown += len(batch)
            yield batch


def _take(batches: Iterable[Sequence[Sequence]], limit: int) -> tuple[list[Sequence], bool]:
    """The first `limit` rows (0: all), and whether there were more."""
    limited = _limited(batches, limit)
    return [row for batch in limited for row in batch], limited.more


def _table(columns: Sequence[str], cells: list[list[str]], rows: Sequence[Sequence], more: bool = False) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    body = [line(columns), sep, *(line(r) for r in cells)]
    if more:
        body.append(f"({len(rows)} rows shown; {MORE_ROWS})")
    else:
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
