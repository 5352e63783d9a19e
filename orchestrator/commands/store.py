"""Looking after a store: `compact` (fewer, sorted files and per-trial summaries), `store
check` (what the readers read and skip, what killed writers left) and `store clean`
(remove those leftovers). The work is `stepscope.orchestrator.store_admin`'s and
`stepscope.analysis.compact`'s; here it is parsed and printed."""

from __future__ import annotations

import sys
import time

import click

from stepscope.orchestrator.commands.common import (
    EXIT_TRIALS_FAILED,
    command,
    require_results,
    store_args,
)
from stepscope.orchestrator.options import EVERY_SWEEP, store_option, sweep_option
from stepscope.storage.store import Store, resolve_store


@click.command()
@store_option
@sweep_option(default=f"{EVERY_SWEEP}: every sweep that needs it")
@click.option("--dry-run", is_flag=True, help="Say which sweeps would be compacted; write and delete nothing.")
def compact(store: str | None, sweep: str | None, dry_run: bool) -> None:
    """Rewrite each sweep's per-trial files into one sorted file per table (trials, steps,
    devices) and store per-trial summaries, so queries over thousands of trials read a few
    files and comparisons a few rows per trial. The views read the same rows before and
    after; a trial rewritten later (a retry, a resumed run) is read from its new files.
    One line per sweep: trials, files before -> after, rows written, seconds. Run it while
    no sweep writes to the sweeps it compacts (a file rewritten meanwhile is kept, not lost).

    Example:

        stepscope compact
        stepscope compact --sweep latest --dry-run
    """
    from stepscope.analysis.compact import compact_sweep, plan_compaction

    st = Store(resolve_store(store))
    plan = plan_compaction(st, sweep)
    require_results(plan.contents, store)
    for work in plan.sweeps:
        if dry_run:
            click.echo(f"{work.sweep_id}: {work.trials} trials, {work.files} files -> {work.files_after} "
                       f"(dry run: nothing written)")
            continue
        done = compact_sweep(st, work.sweep_id)
        kept = (f"; kept the loose files of {len(done.kept)} trial(s) rewritten while it ran: compact again later"
                if done.kept else "")
        click.echo(f"{done.sweep_id}: {done.trials} trials, {done.files_before} files -> {done.files_after}, "
                   f"{sum(done.rows.values()):,} rows, {done.seconds:.2f} s{kept}")
    if plan.settled:
        click.echo(f"{len(plan.settled)} sweep(s) with nothing to compact: {', '.join(plan.settled[:5])}"
                   + (", ..." if len(plan.settled) > 5 else ""))


@click.group("store")
def store_group() -> None:
    """Look after a results store: list what its readers skip, remove what killed writers left.

    Example:

        stepscope store check
        stepscope store clean --older-than 0
    """


@store_group.command("check")
@store_option
def store_check(store: str | None) -> None:
    """List the store's files per table: read, skipped (and why), and leftovers of killed writers.

    Exit code 0 when every file is read and nothing is left over, 1 otherwise.

    Example:

        stepscope store check --store ./stepscope-results
    """
    from stepscope.orchestrator.progress import duration
    from stepscope.orchestrator.store_admin import inspect

    report = inspect(Store(resolve_store(store)))
    for listing in report.tables:
        compacted = f" ({len(listing.compacted)} compacted)" if listing.compacted else ""
        click.echo(f"{listing.table}: {len(listing.files) + len(listing.compacted)} file(s) read{compacted}, "
                   f"{len(listing.skipped)} skipped")
    for skipped in report.skipped:
        click.echo(f"  skipped {skipped}")
    now = time.time()
    for item in report.leftovers:
        age = f", {duration(now - item.mtime)} old" if item.mtime is not None else ""
        click.echo(f"  leftover ({item.kind}{age}): {item.path}")
    if report.leftovers:
        click.echo(f"{len(report.leftovers)} leftover file(s) of killed writers; remove them with: "
                   f"{command('stepscope', 'store', 'clean', *store_args(store))}")
    if report.skipped:
        click.echo(f"{len(report.skipped)} file(s) skipped by every reader; stepscope did not write them "
                   f"as they are: move or delete them yourself")
    if not report.orphans_checked:
        click.echo("steps/devices files without a trials row are not looked for while a trials entry is "
                   "skipped (it may be their trial's): fix or move the skipped trials entries first")
    if report.skipped or report.leftovers:
        sys.exit(EXIT_TRIALS_FAILED)


@store_group.command("clean")
@store_option
@click.option("--older-than", "older_than", default="1h", show_default=True, metavar="AGE",
              help="Remove only leftovers older than this (e.g. 30s, 15m, 2h, 0): "
                   "a writer still running holds its files for seconds.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def store_clean(store: str | None, older_than: str, dry_run: bool) -> None:
    """Remove the leftovers of killed writers: temporary files, and steps/devices files
    whose trial never got its trials row. Files the readers skip are listed, never removed.

    Example:

        stepscope store clean --dry-run
    """
    from stepscope.orchestrator.store_admin import clean

    age = parse_age(older_than)
    verb = "would remove" if dry_run else "removed"
    done = clean(Store(resolve_store(store)), age, dry_run=dry_run,
                 on_removed=lambda item: click.echo(f"{verb} {item.kind}: {item.path}"))
    click.echo(f"{verb} {done.removed} leftover file(s); kept {done.kept} younger than {older_than}"
               + (f"; {done.skipped} skipped file(s) left alone (see stepscope store check)" if done.skipped else ""))


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """`--older-than`'s AGE in seconds: a number with s (the default), m, h or d."""
    value, unit = text.strip(), "s"
    if value and value[-1] in _AGE_UNITS:
        value, unit = value[:-1], value[-1]
    try:
        seconds = float(value) * _AGE_UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r}: write a number with s, m, h or d (e.g. 15m, or 0)", param_hint="--older-than") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise click.BadParameter(f"{text!r}: give an age of 0 or more", param_hint="--older-than")
    return seconds
