"""Which sweeps a reader reads: the one `--sweep` of query, compare, report and compact.

The syntax, the same everywhere (`-p sweep=...` for a named query, `--sweep ...` elsewhere):

- `latest`: the newest sweep, by its `sweeps` row's created_at (then the greatest id);
- `all`: every sweep (given among others too, it still means every sweep);
- a sweep id;
- a sweep name (`sweeps.name`, the spec's `name:`): every sweep of that name (an id wins
  over a name that reads the same);
- several of these, separated by commas: their union (`latest,nightly-old`).

The defaults, chosen as users expect (`DEFAULT`): `latest` for query, compare and report,
what someone who has just run a sweep wants to see; `all` for `compare --by sweep` (its axis
is the sweeps: the baseline's sweep is always kept in, whatever --sweep says) and, with
`--by sweep`, the report; `all` for compact, which tidies every sweep that needs it. Library
functions take `sweep=None` for the default, which is how the CLI says the user gave none.

`resolve` gives the chosen sweep ids, sorted, or None for every sweep; `sql_value` the text
queries/views.sql's `in_sweep(sweep_id, $sweep)` reads ('all', or the ids joined by commas:
a sweep id holds no comma). An unknown sweep, an empty selection, or `latest` in a store
whose sweeps have no `sweeps` row are a `SweepError` of one line naming the option and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import duckdb

from stepscope.errors import StepscopeError

LATEST = "latest"
ALL = "all"
#: The default of query, compare and report (module docstring).
DEFAULT = LATEST
#: How many known sweeps an error names before a count.
SHOWN = 10


class SweepError(StepscopeError, ValueError):
    """The sweep selection names no sweep of the store, or cannot be read: one line naming
    the option (`--sweep`, `-p sweep`) and the fix."""


@dataclass(frozen=True, slots=True)
class KnownSweep:
    """A sweep of the store: its `sweeps` row's name and created_at (both None for a sweep
    known by its trials only: its `sweeps` file skipped, or not copied with them)."""

    sweep_id: str
    name: str | None = None
    created_at: object | None = None
    has_row: bool = False


#: Every sweep of a store: those with a `sweeps` row, then those known only by their trials.
_KNOWN_SQL = """
select sweep_id, name, created_at, true as has_row from sweeps
union all
select distinct sweep_id, null, null, false from trials where sweep_id not in (select sweep_id from sweeps)
"""


def known_sweeps(con: duckdb.DuckDBPyConnection) -> list[KnownSweep]:
    """The store's sweeps (connection `con` over its views), one `KnownSweep` per row."""
    return [KnownSweep(*row) for row in con.execute(_KNOWN_SQL).fetchall()]


def resolve(con: duckdb.DuckDBPyConnection, text: str | None, *, keep: Iterable[str] = (), default: str = DEFAULT,
            option: str = "--sweep") -> list[str] | None:
    """The sweep ids `text` names (this module's syntax), sorted, or None for every sweep.

    `text` None means `default`. `keep`: sweeps always in a list result (a sweep id, or a name
    of exactly one sweep; one naming none is left to the caller to report). `option`: how the
    user gave the selection, for the message ('--sweep', or '-p sweep' for a named query's
    parameter). Raises SweepError. The store is read only when the answer depends on it
    (`all` reads nothing)."""
    return choose(lambda: known_sweeps(con), text, keep=keep, default=default, option=option)


def choose(known: Callable[[], Sequence[KnownSweep]] | Sequence[KnownSweep], text: str | None, *,
           keep: Iterable[str] = (), default: str = DEFAULT, option: str = "--sweep") -> list[str] | None:
    """`resolve` over the sweeps `known` lists (or a function that lists them, called only
    when needed): for a reader with no connection (compact lists a store's files)."""
    text = default if text is None else text
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SweepError(f"{option}: give latest, all, or sweep ids or names separated by commas")
    if ALL in items:
        return None
    sweeps = list(known() if callable(known) else known)
    ids = {s.sweep_id for s in sweeps}
    by_name: dict[str, list[str]] = {}
    for s in sweeps:
        if s.name:
            by_name.setdefault(s.name, []).append(s.sweep_id)
    chosen: list[str] = []
    for item in items:
        if item == LATEST:
            chosen += _latest(sweeps, option)
        elif item in ids:
            chosen.append(item)
        elif item in by_name:
            chosen += by_name[item]
        else:
            raise SweepError(f"{_given(option, item)}: no such sweep in the store; use latest, all, or one of: "
                             f"{_shown(sweeps)}")
    for item in keep:
        if item in ids:
            chosen.append(item)
        elif len(set(by_name.get(item, ()))) == 1:
            chosen += by_name[item][:1]
    return sorted(set(chosen))


def default_for(sweep: str | None, *, by_sweep: bool = False) -> str:
    """What a reader reads when the user gave `sweep` (None: nothing): `DEFAULT`, or every
    sweep when the comparison's axis is the sweep itself (`compare --by sweep`, and the
    report's compare section with `--by sweep`)."""
    if sweep is not None:
        return sweep
    return ALL if by_sweep else DEFAULT


def sql_value(chosen: list[str] | None) -> str:
    """What `in_sweep(sweep_id, $sweep)` reads for a `resolve` result: 'all', or the ids
    joined by commas ('' for none, which no sweep matches)."""
    return ALL if chosen is None else ",".join(chosen)


def _latest(sweeps: Sequence[KnownSweep], option: str) -> list[str]:
    """[the newest sweep] by its `sweeps` row (created_at, nulls last, then the greatest id);
    [] for a store with no sweep at all."""
    rows = [s for s in sweeps if s.has_row]
    if rows:
        return [max(rows, key=lambda s: (s.created_at is not None, s.created_at or 0, s.sweep_id)).sweep_id]
    if sweeps:
        raise SweepError(f"{_given(option, LATEST)}: the store has no sweeps row to tell the newest sweep "
                         f"(`stepscope store check` says why); give {_given(option, ALL)}, or one of: "
                         f"{_shown(sweeps)}")
    return []


def _given(option: str, value: str) -> str:
    """The selection as the user typed it: `--sweep X`, or `-p sweep=X`."""
    return f"{option}={value}" if " " in option else f"{option} {value}"


def _shown(sweeps: Sequence[KnownSweep]) -> str:
    """The store's sweep ids, newest first (those with no created_at last, by id), the first `SHOWN`."""
    ordered = sorted(sweeps, key=lambda s: s.sweep_id)
    ordered.sort(key=lambda s: (s.created_at is not None, s.created_at), reverse=True)  # stable: ids stay in order
    ids = list(dict.fromkeys(s.sweep_id for s in ordered))
    if not ids:
        return "none"
    return ", ".join(ids[:SHOWN]) + (f" (and {len(ids) - SHOWN} more)" if len(ids) > SHOWN else "")
