"""The base class of every error that is the user's to fix, and how any exception
reads on one line.

Library code raises a subclass of `StepscopeError` (a bad spec, an unreachable
store, an unknown query...); the CLI turns each into one `Error: ...` line and
exit code 2, at one place (`stepscope.orchestrator.cli`). Anything else that
escapes is a bug, reported as such. Imports nothing.

A message names the library's inputs as the library calls them (`store /x: cannot write
...`, for `Store('/x')`); each such name is a `Field` part of the message, so that a front
end that calls the input otherwise (the CLI's `--store`) says it its own way
(`StepscopeError.render`, `one_line(..., spell=...)`) without reading the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """An input of the library that an error message names: a parameter or argument of a
    public function (`store`, `by`, `min_effect`), by the library's name for it."""

    name: str

    def __str__(self) -> str:
        return self.name


class StepscopeError(Exception):
    """An error the user can fix. `str()` is the message the user sees: it names the
    file, parameter or field at fault and says how to fix it.

    The message is given as parts, joined as they are: text, `Field`s where it names an
    input (`StoreError(STORE, f" {location}: cannot write ...")`), and other StepscopeErrors
    that it wraps (their fields stay fields). `str()` spells every field by its library
    name; `render` spells them as a front end does. `field` is the input at fault: the
    first field named."""

    def __init__(self, *parts: str | Field | StepscopeError) -> None:
        super().__init__(*parts)

    @property
    def field(self) -> str | None:
        for part in self.args:
            if isinstance(part, Field):
                return part.name
            if isinstance(part, StepscopeError) and part.field is not None:
                return part.field
        return None

    def render(self, spell: Callable[[Field], str] = str) -> str:
        """The message with each field spelled `spell(field)` (by default its library name)."""
        return "".join(
            spell(part) if isinstance(part, Field)
            else part.render(spell) if isinstance(part, StepscopeError)
            else str(part)
            for part in self.args
        )

    def __str__(self) -> str:
        return self.render()


def one_line(exc: BaseException, *, limit: int = 2000, with_type: bool = True,
             spell: Callable[[Field], str] | None = None) -> str:
    """`exc` as one line: `Type: first line of its message`, cut to `limit` characters.

    The first non-blank line, whitespace folded: DuckDB puts a caret diagram below
    it, Python a traceback's context. An exception that wraps another one (Ray's
    `RayTaskError`, whose own text is a remote traceback ending in the real error)
    is described by what it wraps, its `cause`. `spell`: how a StepscopeError's fields
    are spelled (`StepscopeError.render`; the CLI spells them as its options).
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    try:
        message = exc.render(spell) if spell is not None and isinstance(exc, StepscopeError) else str(exc)
    except Exception as inner:  # an exception whose __str__ raises is still described
        message = f"(its message cannot be shown: {type(inner).__name__} in __str__)"
    if not isinstance(message, str):  # a __str__ returning bytes, say
        message = repr(message)
    lines = [" ".join(line.split()) for line in message.splitlines()]
    text = next((line for line in lines if line), "")
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:limit]
