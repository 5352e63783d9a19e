"""The options several commands share, each defined once: --store, --sweep and --timeout.
(`--format` and `--max-rows` are `output.output_options`, beside the code that writes rows.)"""

from __future__ import annotations

import math

import click

store_option = click.option(
    "--store",
    metavar="URI",
    default=None,
    help="Results store: a directory or a URI (default: $STEPSCOPE_STORE, else ./stepscope-results).",
)


def _finite_timeout(ctx, param, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value}: give a number of seconds, or leave --timeout out for none")
    return value


timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    callback=_finite_timeout,
    help="Stop the query after this many seconds (default: none; Ctrl-C stops it too).")

SWEEP_METAVAR = "ID|NAME|latest|all|A,B"
#: What every command's --sweep takes; the default follows it, said once per command.
SWEEP_HELP = ("Which sweep(s): a sweep id, a name (every sweep of that name), latest, all, or several "
              "ids and names, comma-separated")
#: The default rule for reading commands (query, compare, report): the newest sweep.
SWEEP_DEFAULT = "latest"
#: What compact reads with --sweep left out, and (TODO, issue 17 item 3: until the library's
#: one sweep resolver takes sweep=None for SWEEP_DEFAULT) compare and report too, as before.
EVERY_SWEEP = "all"


def sweep_or_every(sweep: str | None) -> str:
    """`sweep` as given, or every sweep when it was left out (the old default, kept until the
    library takes None for its own; an empty --sweep stays empty, for the library to refuse)."""
    return EVERY_SWEEP if sweep is None else sweep


def sweep_option(fn=None, *, default: str = SWEEP_DEFAULT, note: str = ""):
    """Add `--sweep` (given as `sweep`, None when left out: the library's default applies)
    to a command. `default` says what leaving it out means, `note` what this command adds."""

    def decorate(f):
        text = f"{SWEEP_HELP} (default: {default}).{' ' + note if note else ''}"
        return click.option("--sweep", "sweep", default=None, metavar=SWEEP_METAVAR, help=text)(f)

    return decorate(fn) if fn is not None else decorate
