"""What several commands share: exit codes, pasteable command lines, the empty-store message."""

from __future__ import annotations

import os
import shlex

import click

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Whoever read our output stopped (`stepscope sql ... | head -1`): exit quietly, with the
#: status a shell reports for a tool that SIGPIPE ended (128 + 13), as `yes | head -1` does.
EXIT_BROKEN_PIPE = 141


def command(*argv: str) -> str:
    """A command line the user can paste: every argument shell-quoted."""
    return shlex.join(argv)


def store_args(store: str | None) -> tuple[str, ...]:
    return ("--store", store) if store else ()


def require_results(contents, store: str | None) -> None:
    """EmptyStoreError unless the store holds a sweep; the message names the store as the user
    gave it (--store, STEPSCOPE_STORE, or the default) and the `run` that fills it."""
    if store is not None:
        named, args = f"--store {contents.location}", ("--store", store)
    elif os.environ.get("STEPSCOPE_STORE"):
        named, args = f"STEPSCOPE_STORE={contents.location}", ()
    else:
        named, args = f"{contents.location} (the default store: no --store, STEPSCOPE_STORE unset)", ()
    contents.require_results(named, command("stepscope", "run", "SPEC", *args))


def warn_unused(workload: str, names: str) -> None:
    listed = ", ".join(repr(n) for n in names.split(","))
    click.echo(f"Warning: {workload} never read {listed} from its parameters; a typo in the spec? "
               "(trials.unused_params)", err=True)
