"""Reading the store with SQL: `query` (a named query from queries/) and `sql` (ad hoc)."""

from __future__ import annotations

import click

from stepscope.orchestrator.commands.common import require_results
from stepscope.orchestrator.options import store_option, sweep_option, timeout_option
from stepscope.orchestrator.output import output_options, write_rows
from stepscope.storage.store import resolve_store


@click.command()
@click.argument("name", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Query parameter (repeatable).")
@sweep_option(note="Sets the query's sweep parameter, as -p sweep=... does.")
@click.option("--list", "list_", is_flag=True, help="List the named queries with their descriptions.")
@store_option
@output_options
@timeout_option
def query(name: str | None, params: tuple[str, ...], sweep: str | None, list_: bool, store: str | None,
          fmt: str | None, max_rows: int | None, timeout: float | None) -> None:
    """Run the named query queries/NAME.sql against the store.

    Example:

        stepscope query --list
        stepscope query phase_breakdown --sweep all --format markdown
    """
    from stepscope.analysis.queries import bind, get_query, list_queries, stream_query, watch
    from stepscope.analysis.warehouse import open_store

    if list_:
        rows = [[q.name, q.description, ", ".join(f"{p.name}={p.default}" for p in q.parameters)] for q in list_queries()]
        write_rows(["query", "description", "parameters"], [rows], fmt, max_rows)
        return
    if not name:
        raise click.UsageError("give a query NAME, or --list to see them")
    bound = parse_params(params, sweep)
    bind(get_query(name), bound)  # the query and its parameters are checked before the store is read
    opened = open_store(resolve_store(store))
    require_results(opened.contents, store)  # a store with no sweep is not an empty answer
    con = opened.con
    with watch(con, timeout):
        given_as = "-p sweep" if sweep is None and "sweep" in bound else "--sweep"
        result = stream_query(con, name, bound, sweep_option=given_as)
        write_rows(result.columns, result.batches, fmt, max_rows)


def parse_params(params: tuple[str, ...], sweep: str | None = None) -> dict[str, str]:
    """`-p KEY=VALUE` items as a dict, the last of a repeated key winning; `--sweep` sets the
    `sweep` parameter (a usage error when `-p sweep=` says otherwise)."""
    bound = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="-p")
        bound[key] = value
    if sweep is not None:
        if bound.get("sweep", sweep) != sweep:
            raise click.UsageError(f"--sweep {sweep} and -p sweep={bound['sweep']} differ: give one of them")
        bound["sweep"] = sweep
    return bound


# SQL may open with a `--` comment, which Click would take for an option: an unknown
# option-like argument is the SQL text instead (a mistyped option then reads as SQL and
# gets the "no statement" message, or "unexpected extra argument").
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("sql_text", metavar="SQL")
@store_option
@output_options
@timeout_option
def sql(sql_text: str, store: str | None, fmt: str | None, max_rows: int | None, timeout: float | None) -> None:
    """Run ad hoc SQL against the store's views (sweeps, trials, steps, ...).

    Example:

        stepscope sql "select workload, precision, median(samples_per_s) from trials group by all"
    """
    from stepscope.analysis.queries import reads_relations, stream_sql, watch
    from stepscope.analysis.warehouse import READY, open_store

    opened = open_store(resolve_store(store))
    con = opened.con
    with watch(con, timeout):
        result = stream_sql(con, sql_text)  # SQL DuckDB refuses is reported before the store is
        if opened.contents.state != READY and reads_relations(con, sql_text):
            require_results(opened.contents, store)  # `select 1` needs no store; `from trials` does
        write_rows(result.columns, result.batches, fmt, max_rows)
