"""The report's HTML: the page, its style sheet, and the pieces a section is made of
(paragraphs, notes, figures, tables with their number formats)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
