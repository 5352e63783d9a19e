"""`stepscope report`: one self-contained HTML report of the store."""

from __future__ import annotations

import click

from stepscope.orchestrator.commands.common import require_results
from stepscope.orchestrator.options import SWEEP_DEFAULT_BY, store_option, sweep_option
from stepscope.storage.store import resolve_store


@click.command()
@click.option("--out", "out_path", required=True, metavar="FILE.html",
              help="Where to write the report (replaced atomically if it exists).")
@store_option
@sweep_option(default=SWEEP_DEFAULT_BY)
@click.option("--by", default=None, metavar="AXIS",
              help="The compare section's axis (default: gpu_model with 2+ models, else device_name, else precision).")
@click.option("--baseline", default=None, metavar="VALUE", help="The compare section's baseline value.")
def report(out_path: str, store: str | None, sweep: str | None, by: str | None, baseline: str | None) -> None:
    """Write one self-contained HTML report (plots as inline SVG, nothing fetched): the phases
    of the step per GPU model, throughput against batch size, MFU, memory against capacity,
    backward/forward, launch-bound configurations, the compare table, devices and specs.

    Example:

        stepscope report --out report.html
        stepscope report --out h100-vs-a100.html --by gpu_model --baseline A100 --sweep latest
    """
    from stepscope.analysis.report import check_out_path, write_report
    from stepscope.analysis.warehouse import open_store

    check_out_path(out_path)  # a bad --out is reported before the store is read
    opened = open_store(resolve_store(store))
    require_results(opened.contents, store)
    info = write_report(opened.con, out_path, sweep=sweep, by=by, baseline=baseline,
                        store=opened.contents.location)
    click.echo(f"{info.path}: {info.size_bytes:,} bytes ({info.size_bytes / 1024:,.0f} KiB)")
