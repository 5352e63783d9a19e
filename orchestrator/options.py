"""The options several commands share, each defined once: --store, --sweep and --timeout.
(`--format` and `--max-rows` are `output.output_options`, beside the code that writes rows.)
And how the CLI spells each input that the library's errors name (`option_of`)."""

from __future__ import annotations

import math

import click

from stepscope.errors import Field

#: The option that gives each input the library's errors name (`stepscope.errors.Field`, by
#: the library's name for it). The boundary (`stepscope.orchestrator.cli`) prints every error
#: with its fields spelled so: the library's `store /x: cannot write ...` reads
#: `--store /x: cannot write ...`.
OPTION_OF_FIELD = {
    "store": "--store",
    "address": "--address",
    "sweep": "--sweep",
    "sweep_id": "--sweep-id",
    "gpu": "--gpu",
    "timeout": "--timeout",
    "out_path": "--out",
    "by": "--by",
    "baseline": "--baseline",
    "metrics": "--metric",
    "min_effect": "--min-effect",
}


def option_of(field: Field) -> str:
    """The option that gives `field` (its library name where no option does)."""
    return OPTION_OF_FIELD.get(field.name, field.name)

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
#: What every command's --sweep takes (`stepscope.analysis.sweeps` resolves it, once for all).
SWEEP_HELP = ("Which sweep(s): a sweep id, a name (every sweep of that name), latest, all, or several "
              "ids and names, comma-separated")
#: The default rule (`stepscope.analysis.sweeps.DEFAULT`): the newest sweep; where the axis
#: compared is the sweep (`--by sweep`), every sweep. Compact tidies every sweep (`EVERY_SWEEP`).
SWEEP_DEFAULT = "latest"
SWEEP_DEFAULT_BY = f"{SWEEP_DEFAULT}; with --by sweep, every sweep"
EVERY_SWEEP = "all"


def sweep_option(fn=None, *, default: str = SWEEP_DEFAULT, note: str = ""):
    """Add `--sweep` to a command: `sweep`, None when left out, for the library function to
    take as its default (`stepscope.analysis.sweeps`). `default` says in the help what that
    default is, `note` what this command adds."""

    def decorate(f):
        text = f"{SWEEP_HELP} (default: {default}).{' ' + note if note else ''}"
        return click.option("--sweep", "sweep", default=None, metavar=SWEEP_METAVAR, help=text)(f)

    return decorate(fn) if fn is not None else decorate
