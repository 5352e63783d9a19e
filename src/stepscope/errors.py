"""The base class of every error that is the user's to fix, and how any exception
reads on one line.

Library code raises a subclass of `StepscopeError` (a bad spec, an unreachable
store, an unknown query...); the CLI turns each into one `Error: ...` line and
exit code 2, at one place (`stepscope.orchestrator.cli`). Anything else that
escapes is a bug, reported as such. Imports nothing.
"""

from __future__ import annotations


class StepscopeError(Exception):
    """An error the user can fix. `str()` is the message the user sees: it names the
    file, option or field at fault and says how to fix it."""


def one_line(exc: BaseException, *, limit: int = 2000, with_type: bool = True) -> str:
    """`exc` as one line: `Type: first line of its message`, cut to `limit` characters.

    The first non-blank line, whitespace folded: DuckDB puts a caret diagram below
    it, Python a traceback's context. An exception that wraps another one (Ray's
    `RayTaskError`, whose own text is a remote traceback ending in the real error)
    is described by what it wraps, its `cause`.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    try:
        message = str(exc)
    except Exception as inner:  # an exception whose __str__ raises is still described
        message = f"(its message cannot be shown: {type(inner).__name__} in __str__)"
    if not isinstance(message, str):  # a __str__ returning bytes, say
        message = repr(message)
    lines = [" ".join(line.split()) for line in message.splitlines()]
    text = next((line for line in lines if line), "")
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:limit]
