"""`stepscope compare`: one axis's values side by side, and the `--fail-on` gate's exit code."""

from __future__ import annotations

import sys

import click

from stepscope.analysis.gate import FAIL_ON
from stepscope.orchestrator.commands.common import EXIT_TRIALS_FAILED, require_results
from stepscope.orchestrator.options import (
    SWEEP_DEFAULT_BY,
    store_option,
    sweep_option,
    timeout_option,
)
from stepscope.orchestrator.output import output_options, write_rows
from stepscope.storage.store import resolve_store


@click.command()
@click.option("--by", "by", required=True, metavar="AXIS",
              help="What to put side by side: a trials column (device_name, gpu_model, gpu, gpu_variant, precision, "
                   "batch_size, torch_version...), sweep, or a workload parameter.")
@click.option("--baseline", default=None, metavar="VALUE",
              help="The value the others are divided by (default: the first: the oldest sweep, the smallest "
                   "number, else alphabetically first). For --by sweep, a sweep id or a sweep's name.")
@sweep_option(default=SWEEP_DEFAULT_BY,
              note="A configuration's trials in several sweeps pool as repeats. With --by sweep the "
                   "--baseline sweep is always in (--sweep latest: the newest sweep against the baseline).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Compare only these metrics (repeatable; default all): "
                   "step_ms, <phase>_ms, samples_per_s, mfu, peak_memory_bytes, energy_j_per_sample.")
@click.option("--min-effect", type=float, default=0.05, show_default=True, metavar="FRACTION",
              help="A ratio within this fraction either way is `same` (0.05 = 5%).")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default=None,
              help="Exit 1 when a configuration's step_ms verdict (every --metric's, without step_ms) is this "
                   "(changed: any direction); slower and changed also fail on a configuration the baseline has "
                   "and a value lacks: a CI gate.")
@click.option("--show", type=click.Choice(["all", "rows", "summary", "environment", "gaps"]), default=None,
              help="Which tables to print (default: all; rows in csv, which holds one table).")
@store_option
@output_options
@timeout_option
@click.pass_context
def compare(ctx: click.Context, by: str, baseline: str | None, sweep: str | None, metrics: tuple[str, ...],
            min_effect: float, fail_on: str | None, show: str | None, store: str | None, fmt: str | None,
            max_rows: int | None, timeout: float | None) -> None:
    """Put the values of one axis side by side, per configuration: each metric's value, the
    ratio to the baseline, its 95% bootstrap interval, a Mann-Whitney test and a verdict
    (faster, slower, same within --min-effect, or unsure); then the geometric mean of the
    ratios per value, and what differs in the environment. docs/statistics.md gives the
    statistics and their sources.

    Example:

        stepscope compare --by device_name
        stepscope compare --by precision --baseline fp32 --metric step_ms --metric samples_per_s
        stepscope compare --by sweep --baseline nightly-old --fail-on slower
    """
    from stepscope.analysis.compare import compare as run_compare
    from stepscope.analysis.gate import gate_failures
    from stepscope.analysis.queries import watch
    from stepscope.analysis.warehouse import open_store

    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    show = show or ("rows" if fmt == "csv" else "all")
    if fmt == "csv" and show == "all":
        raise click.BadParameter("csv holds one table; choose --show rows, summary or environment", param_hint="--show")
    opened = open_store(resolve_store(store))
    require_results(opened.contents, store)
    with watch(opened.con, timeout):
        result = run_compare(opened.con, by, baseline, sweep=sweep, min_effect=min_effect,
                             metrics=metrics or None)
    print_result(result, show, fmt, max_rows)
    if result.gaps and show not in ("all", "gaps"):
        for gap in result.gaps:
            click.echo(f"Note: {result.axis} {gap['value']}: {gap['detail']}", err=True)
    reasons = gate_failures(result, fail_on) if fail_on else []
    if reasons:
        click.echo(f"compare: {'; '.join(reasons)}: --fail-on {fail_on}", err=True)
        ctx.exit(EXIT_TRIALS_FAILED)


def print_result(result, show: str, fmt: str, max_rows: int | None) -> None:
    """The tables `show` names (all: rows, summary, environment and gaps, each headed) in `fmt`."""
    from stepscope.analysis.compare import ENVIRONMENT_COLUMNS, GAP_COLUMNS, SUMMARY_COLUMNS

    tables = {
        "rows": (result.row_columns, result.rows),
        "summary": (list(SUMMARY_COLUMNS), result.summary),
        "environment": (list(ENVIRONMENT_COLUMNS), result.environment),
        "gaps": (list(GAP_COLUMNS), result.gaps),
    }
    if fmt == "json" and show == "all":
        import json

        from stepscope.orchestrator.output import _json

        document = {"axis": result.axis, "baseline": result.baseline, "values": result.values,
                    "min_effect": result.min_effect, **{name: rows for name, (_, rows) in tables.items()}}
        click.echo(json.dumps(_json(document), indent=2))
        return
    if show != "all":
        columns, rows = tables[show]
        write_rows(columns, [[[r.get(c) for c in columns] for r in rows]], fmt, max_rows)
        return
    others = ", ".join(v for v in result.values if v != result.baseline)
    configs = len({tuple(r.get(c) for c in result.row_columns[:result.row_columns.index("metric")])
                   for r in result.rows})
    heading = "##" if fmt == "markdown" else ""
    click.echo(f"{heading} {result.axis}: {others} against the baseline {result.baseline} "
               f"({configs} configuration(s); verdicts beyond {result.min_effect:.0%})".strip())
    # The heading names the baseline, and the value too when there is one other.
    hidden = {"baseline"} | ({"value"} if len(result.values) == 2 else set())
    columns = [c for c in result.row_columns if c not in hidden]
    write_rows(columns, [[[r.get(c) for c in columns] for r in result.rows]], fmt, max_rows)
    click.echo("")
    click.echo(f"{heading} summary: geometric mean of the ratios across configurations, with a 95% interval".strip())
    write_rows(list(SUMMARY_COLUMNS), [[[r.get(c) for c in SUMMARY_COLUMNS] for r in result.summary]], fmt, max_rows)
    click.echo("")
    if result.environment:
        click.echo(f"{heading} environment: what differs between the baseline's trials and each value's".strip())
        write_rows(list(ENVIRONMENT_COLUMNS), [[[r.get(c) for c in ENVIRONMENT_COLUMNS] for r in result.environment]],
                   fmt, max_rows)
    else:
        click.echo(f"{heading} environment: the same driver, CUDA, torch, stepscope and device on every side".strip())
    if result.gaps:
        click.echo("")
        click.echo(f"{heading} gaps: what the baseline has and a value lacks".strip())
        write_rows(list(GAP_COLUMNS), [[[r.get(c) for c in GAP_COLUMNS] for r in result.gaps]], fmt, max_rows)
