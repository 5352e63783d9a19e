"""The `stepscope` command: a thin Click layer over the library.

The group is here; its commands live in `stepscope.orchestrator.commands`, one module per
family (run, jobs, query, compare, report, store, peaks), and are added below. Library code
raises subclasses of `stepscope.errors.StepscopeError` (SpecError, StoreError, QueryError,
SchedulerError, ...); they become one `Error: ...` line and exit code 2 here, once, each
input they name (`stepscope.errors.Field`) spelled as the option that gives it
(`options.option_of`: the library's `store /x: ...` prints as `--store /x: ...`).
Ray and torch are imported only by the commands that need them.
"""

from __future__ import annotations

import inspect
import io
import os
import sys
import traceback
import warnings

import click

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator.commands import compare, jobs, peaks, query, report, run, store
from stepscope.orchestrator.commands.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRIALS_FAILED,
    EXIT_USAGE,
)
from stepscope.orchestrator.options import option_of
from stepscope.storage.layout import StoreWarning

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TRIALS_FAILED", "EXIT_USAGE", "cli", "main"]


class _Group(click.Group):
    """Turns the user's errors (`StepscopeError`) into one line and exit code 2; anything
    else is a bug, reported as one line with exit code 1. Tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                warnings.simplefilter("always", StoreWarning)
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C: stopped by the user, as a shell reports it
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _stdout_to_devnull()
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # the one boundary where errors become messages
            if (ctx.obj or {}).get("debug"):
                traceback.print_exc()
            if isinstance(exc, StepscopeError):  # the inputs it names, as the options that give them
                click.echo(f"Error: {one_line(exc, with_type=False, spell=option_of)}", err=True)
                ctx.exit(EXIT_USAGE)
            click.echo(f"Error: unexpected {one_line(exc)} (rerun with --debug for a traceback)", err=True)
            ctx.exit(EXIT_TRIALS_FAILED)


def _stdout_to_devnull() -> None:
    """Nobody reads stdout any more: point it at /dev/null, so that what is still buffered
    (flushed at exit) raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor (a test's captured stdout)
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning is one `Warning: ...` line on stderr, as errors are."""
    click.echo(f"Warning: {one_line(message, with_type=False)}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="stepscope")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """stepscope: where the time and memory of a training step go.

    Write a sweep spec, run it on Ray, query the results with SQL.

    Example:

        stepscope run examples/quickstart.yaml
        stepscope query phase_shares
    """
    ctx.ensure_object(dict)["debug"] = debug


def main() -> None:
    cli(prog_name="stepscope")


def _keep_examples_verbatim(command: click.Command) -> None:
    """Click rewraps every paragraph of a help text, which runs the indented command lines of
    an `Example:` block together into one. A paragraph whose lines are all indented is code:
    mark it `\\b` (Click's "do not rewrap"), on every command and subcommand, once."""
    if command.help and not getattr(command, "_examples_verbatim", False):
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            "\b\n" + para if para.strip() and all(line.startswith("  ") for line in para.splitlines() if line) else para
            for para in paragraphs
        )
        command._examples_verbatim = True
    for sub in getattr(command, "commands", {}).values():
        _keep_examples_verbatim(sub)


#: Every command, by family; `stepscope --help` lists them alphabetically.
COMMANDS = (
    run.plan, run.run, run.trial, run.workloads,
    jobs.submit, jobs.jobs,
    query.query, query.sql,
    compare.compare,
    report.report,
    store.compact, store.store_group,
    peaks.peaks,
)
for _command in COMMANDS:
    cli.add_command(_command)
_keep_examples_verbatim(cli)  # every command is added by now


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
