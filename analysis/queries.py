"""Find, describe and run the named queries in `queries/*.sql`.

A named query is one SQL file whose header comment (the `--` lines it opens
with) says what it answers, which parameters it takes and which columns it
returns. The first line is its one-line description; each parameter has a
line of its own::

    -- Where a training step's time goes, phase by phase, per configuration.
    --
    -- param: sweep = latest  (sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all')

`param: NAME = DEFAULT  (help)` declares a parameter with a default; leave out
`= DEFAULT` for one the caller must give. Parameters are bound as DuckDB named
parameters (`$sweep`), always as text: a query casts what it needs. Last comes
`columns:`, the names of the columns it returns in order (a name may carry a
note in parentheses; the list goes on over `--   ` lines), which a test holds
to what the query really returns.

The views a query reads come from two files that are not queries themselves:
views.sql (staging: committed rows of the stored tables, typed by the schema) and intermediate.sql
(the joins and the configuration key the queries share), loaded in that order.
A subfolder holds the SQL of one reader that is not a named query (`report/`, the
report's own selections: `read_sql`); `stepscope query --list` lists the top level only.

Every named query's `sweep` parameter takes what `--sweep` takes everywhere
(`stepscope.analysis.sweeps`: ids, names, latest, all, comma-separated), resolved here
to what the `in_sweep` macro reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from stepscope.analysis.sweeps import SweepError, resolve, sql_value
from stepscope.errors import Field, StepscopeError

# `stepscope/queries`: in a wheel, the SQL files themselves; in a checkout (and an
# editable install), src/stepscope/queries, a link to the repository's queries/.
_SQL_DIRS = (Path(__file__).parent.parent / "queries",)

#: The staging views every query reads; not a named query itself.
VIEWS_FILE = "views.sql"
#: The intermediate views, built on the staging views; not a named query either.
INTERMEDIATE_FILE = "intermediate.sql"
#: The files that create the views, in the order they are run.
_VIEW_FILES = (VIEWS_FILE, INTERMEDIATE_FILE)

_PARAM = re.compile(
    r"^param:\s*(?P<name>\w+)\s*(?:=\s*(?P<default>\S+))?\s*(?:\((?P<help>.*)\))?\s*$"
)

Result = tuple[list[str], list[tuple]]
#: Rows per batch when a result streams: small enough for any row width, large enough that
#: the per-batch cost (a DuckDB fetch, a write) is noise.
BATCH_ROWS = 10_000


class QueryError(StepscopeError, RuntimeError):
    """A query cannot be found, bound or run. The message is for the user as it stands;
    for an SQL error it is DuckDB's own (which may span lines: LINE 1 and a caret)."""


#: The time limit as `watch` (and the functions that run a query under it) names it.
TIMEOUT = Field("timeout")


@dataclass(frozen=True, slots=True)
class Rows:
    """A result that streams: its column names, and its rows in batches of at most
    `BATCH_ROWS`, fetched from DuckDB as they are read (so memory stays bounded whatever
    the row count). A DuckDB error while fetching raises QueryError from the iteration."""

    columns: list[str]
    batches: Iterator[list[tuple]]

    def collect(self) -> Result:
        return self.columns, [row for batch in self.batches for row in batch]


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    default: str | None  # None: the caller must give it
    help: str = ""


@dataclass(frozen=True, slots=True)
class QueryInfo:
    name: str
    description: str
    parameters: tuple[QueryParam, ...]
    path: Path


def sql_dir() -> Path:
    """The directory holding the view files and the named queries."""
    for directory in _SQL_DIRS:
        if (directory / VIEWS_FILE).is_file():
            return directory
    raise QueryError(
        f"no SQL directory found: looked for {VIEWS_FILE} in {', '.join(map(str, _SQL_DIRS))}"
    )


def views_sql() -> str:
    """The SQL that creates every view the queries read: the staging views, then the
    intermediate views built on them."""
    directory = sql_dir()
    return "\n".join((directory / name).read_text(encoding="utf-8") for name in _VIEW_FILES)


def read_sql(relative: str) -> str:
    """The text of an SQL file under the SQL directory that is no named query, e.g.
    'report/phases.sql' (a subfolder's files are not listed by `list_queries`)."""
    return (sql_dir() / relative).read_text(encoding="utf-8")


def list_queries() -> list[QueryInfo]:
    """Every named query, sorted by name."""
    paths = sorted(p for p in sql_dir().glob("*.sql") if p.name not in _VIEW_FILES)
    return [_describe(p) for p in paths]


def get_query(name: str) -> QueryInfo:
    known = {q.name: q for q in list_queries()}
    if name not in known:
        raise QueryError(f"unknown query {name!r}; known queries: {', '.join(known) or '(none)'}")
    return known[name]


def run_query(
    con: duckdb.DuckDBPyConnection, name: str, params: dict[str, str] | None = None, *,
    sweep_option: str = "-p sweep",
) -> Result:
    """Run the named query with `params` (missing ones take their defaults: `sweep=latest`,
    `stepscope.analysis.sweeps.DEFAULT`; a `sweep` is any selection `--sweep` takes).
    `sweep_option`: how an error about the sweep names where it came from ('--sweep' when the
    CLI's option gave it)."""
    return stream_query(con, name, params, sweep_option=sweep_option).collect()


def stream_query(
    con: duckdb.DuckDBPyConnection, name: str, params: dict[str, str] | None = None, *,
    sweep_option: str = "-p sweep",
) -> Rows:
    """`run_query`, its rows streamed."""
    query = get_query(name)
    values = bind(query, params or {})
    if "sweep" in values:
        values["sweep"] = _sweep_value(con, query, values["sweep"], sweep_option)
    return _execute(con, query.path.read_text(encoding="utf-8"), values)


def _sweep_value(con: duckdb.DuckDBPyConnection, query: QueryInfo, sweep: str, option: str = "-p sweep") -> str:
    """`-p sweep=...` resolved (`stepscope.analysis.sweeps`: ids, names, latest, all, comma
    lists) to what `in_sweep` reads: an unknown sweep is an error naming the sweeps there, not
    no rows, and `latest` needs a `sweeps` row to tell the newest sweep."""
    try:
        return sql_value(resolve(con, sweep, option=option))
    except SweepError as exc:
        raise QueryError(f"query {query.name}: ", exc) from None  # its fields stay fields


def reads_relations(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    """Does `sql` name a table or view (in any of its statements)? On a `stepscope sql`
    connection every relation is one of the store's views or made by the SQL itself (most
    likely from them), so this says whether its answer depends on what the store holds:
    `select 1` or `select * from range(5)` do not. DuckDB's parser finds the names (CTEs are
    not relations), in a bare connection: `con`'s own would expand its views into the
    registered relations under them and name none. SQL it cannot read counts as naming one."""
    try:
        statements = con.extract_statements(sql)
        with duckdb.connect(":memory:") as bare:
            return any(bare.get_table_names(statement.query) for statement in statements)
    except duckdb.Error:
        return True


#: Statement types `stepscope sql` runs: reading, and what lives in this command's in-memory
#: database (views, macros, tables). Anything else (COPY, EXPORT, ATTACH, DETACH, INSTALL, LOAD,
#: SET, VACUUM, and types DuckDB adds later) is refused: the store is a read-only window.
#: EXPLAIN and PREPARE are run only when the statement they wrap is allowed itself
#: (EXPLAIN ANALYZE runs it). Reading files is bounded apart, by the connection's settings
#: (`stepscope.analysis.warehouse._read_only`).
ALLOWED_STATEMENTS = frozenset({
    "SELECT", "EXPLAIN", "PREPARE", "EXECUTE", "CREATE", "CREATE_FUNC", "DROP", "ALTER", "INSERT", "UPDATE",
    "DELETE", "MERGE_INTO", "PRAGMA", "CALL", "TRANSACTION", "ANALYZE", "VARIABLE_SET",
})
#: The PRAGMAs that only read the catalog (the others change settings, which the locked
#: configuration refuses anyway, or read and run files: import_database).
READ_ONLY_PRAGMAS = frozenset({
    "version", "platform", "user_agent", "show", "show_tables", "show_tables_expanded", "show_databases",
    "table_info", "database_list", "database_size", "functions", "collations", "storage_info",
    "metadata_info",
})
_PRAGMA_NAME = re.compile(r"pragma\s+(\w+)", re.I)
#: EXPLAIN [ANALYZE] [(options)] <statement>; PREPARE name [(types)] AS <statement>.
_WRAPPER = {
    "EXPLAIN": re.compile(r"explain(?:\s+analyze)?(?:\s*\([^)]*\))?\s+(?P<inner>.*)", re.I | re.S),
    "PREPARE": re.compile(r"prepare\s+(?:\"[^\"]*\"|\w+)\s*(?:\([^)]*\))?\s*as\s+(?P<inner>.*)", re.I | re.S),
}
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> Result:
    """Run ad hoc SQL against the views: read-only (see `ALLOWED_STATEMENTS`, and
    `stepscope.analysis.warehouse` for the files a connection may read).

    Raises QueryError for SQL with no statement, a refused statement, or DuckDB's error.
    """
    return stream_sql(con, sql).collect()


def stream_sql(con: duckdb.DuckDBPyConnection, sql: str) -> Rows:
    """`run_sql`, its rows streamed."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes from argv that are not UTF-8 arrive as lone surrogates
        raise QueryError(f"sql: the text is not valid UTF-8 (at character {exc.start + 1}); "
                         "write the query in UTF-8") from None
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    if not statements:
        raise QueryError("sql: no statement to run (empty, or only comments); give a query such as "
                         "\"select * from trials limit 5\"")
    refused = sorted(set().union(*(_refused(con, st) for st in statements)))
    if refused:
        raise QueryError(f"sql: {', '.join(refused)} statements are refused: `stepscope sql` is a read-only "
                         "window on the store; use select (export results with --format csv)")
    return _execute(con, sql, None)


def _refused(con: duckdb.DuckDBPyConnection, statement, depth: int = 0) -> set[str]:
    """The statement types in `statement` (and in what an EXPLAIN or PREPARE wraps) that
    `ALLOWED_STATEMENTS` does not allow."""
    kind = statement.type.name
    if kind not in ALLOWED_STATEMENTS:
        return {kind}
    if kind == "PRAGMA":
        name = _PRAGMA_NAME.match(_LEADING_COMMENTS.sub("", statement.query, count=1))
        return set() if name and name[1].lower() in READ_ONLY_PRAGMAS else {f"PRAGMA {name[1] if name else ''}".strip()}
    wrapper = _WRAPPER.get(kind)
    if wrapper is None:
        return set()
    match = wrapper.match(_LEADING_COMMENTS.sub("", statement.query, count=1))
    if match is None or depth > 4:
        return {f"{kind} (of a statement it cannot check)"}
    try:
        inner = con.extract_statements(match["inner"])
    except duckdb.Error:
        return {f"{kind} (of a statement it cannot check)"}
    return set().union(set(), *(_refused(con, st, depth + 1) for st in inner))


def bind(query: QueryInfo, params: dict[str, str]) -> dict[str, str]:
    """The values to bind: `params` checked against the header, defaults filled in."""
    declared = {p.name: p for p in query.parameters}
    known = ", ".join(declared) or "(none)"
    for key in params:
        if key not in declared:
            raise QueryError(
                f"query {query.name}: unknown parameter {key!r}; known parameters: {known}"
            )
    values = {}
    for p in query.parameters:
        value = params.get(p.name, p.default)
        if value is None:
            raise QueryError(
                f"query {query.name}: missing parameter {p.name!r}; give it with -p {p.name}=VALUE"
            )
        if p.default is not None and _is_number(p.default) and not _is_number(str(value)):
            raise QueryError(f"query {query.name}: -p {p.name}={value}: expected a number, like its default {p.default}")
        values[p.name] = str(value)
    return values


def _is_number(text: str) -> bool:
    """A finite number in ASCII digits (`nan` and `inf` parse as floats but compare to nothing
    useful; Python reads other scripts' digits, DuckDB does not)."""
    try:
        return text.isascii() and math.isfinite(float(text))
    except ValueError:
        return False


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, str] | None) -> Rows:
    try:
        cursor = con.execute(sql, params) if params else con.execute(sql)
    except duckdb.InterruptException:
        raise QueryInterrupted from None
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    except RuntimeError as exc:
        _reraise_interrupt(exc)
        raise
    if cursor.description is None:  # a statement that returns no rows (create, set ...)
        return Rows([], iter(()))
    return Rows([d[0] for d in cursor.description], _batches(cursor))


def _batches(cursor: duckdb.DuckDBPyConnection) -> Iterator[list[tuple]]:
    # DuckDB streams a result: each fetch runs the query as far as that batch needs.
    while True:
        try:
            batch = cursor.fetchmany(BATCH_ROWS)
        except duckdb.InterruptException:
            raise QueryInterrupted from None
        except duckdb.Error as exc:  # e.g. a cast that fails on a row far down
            raise QueryError(str(exc)) from None
        except RuntimeError as exc:
            _reraise_interrupt(exc)
            raise
        if not batch:
            return
        yield batch


class QueryInterrupted(Exception):
    """DuckDB stopped a query because `con.interrupt()` was called (see `watch`)."""


@contextlib.contextmanager
def watch(con: duckdb.DuckDBPyConnection, timeout: float | None = None) -> Iterator[None]:
    """Run and read a query inside this block to stop it on Ctrl-C (KeyboardInterrupt) or
    after `timeout` seconds (QueryError naming `timeout`).

    DuckDB's own check for Ctrl-C is not reliable during a long query (it may never come
    back; duckdb/duckdb#15925), but `con.interrupt()` from another thread is. So a watcher
    thread waits on Python's signal wakeup fd, to which the interpreter's C-level handler
    writes the signal number at once, whatever the main thread is doing, and on the
    clock; either one interrupts the connection. The wakeup fd can be set from the main
    thread only; elsewhere only the timeout is watched.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    stop_r, stop_w = os.pipe()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    why: list[str] = []

    def watcher() -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if why:  # interrupt again and again until the block ends: an interrupt that comes
                left = 0.1  # before DuckDB has started the query is not kept for it
            else:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([read_fd, stop_r], [], [], left)
            if stop_r in ready:
                return
            if read_fd in ready:
                if signal.SIGINT in os.read(read_fd, 64) and "interrupt" not in why:
                    why.append("interrupt")  # another signal is not ours to act on
            elif not why:
                why.append("timeout")
            if why:
                con.interrupt()

    thread = threading.Thread(target=watcher, name="stepscope-query-watch", daemon=True)
    thread.start()
    try:
        yield
    except (QueryInterrupted, duckdb.InterruptException):  # the latter from SQL run outside _execute
        if why[:1] == ["timeout"]:
            raise QueryError("the query ran past ", TIMEOUT, f" {timeout:g} s and was stopped; raise ", TIMEOUT,
                             ", or narrow the query") from None
        raise KeyboardInterrupt from None
    finally:
        os.write(stop_w, b"x")
        thread.join()
        if previous is not None:
            signal.set_wakeup_fd(previous)
        for fd in (read_fd, write_fd, stop_r, stop_w):
            os.close(fd)


def _reraise_interrupt(exc: RuntimeError) -> None:
    """DuckDB answers Ctrl-C during a query with RuntimeError("Query interrupted"): it is
    the user's interrupt, so it becomes KeyboardInterrupt again."""
    if str(exc) == "Query interrupted":
        raise KeyboardInterrupt from None


def _describe(path: Path) -> QueryInfo:
    header = _header(path.read_text(encoding="utf-8"))
    description = next((line for line in header if line), "")
    parameters = []
    for line in header:
        match = _PARAM.match(line)
        if match:
            help_text = (match["help"] or "").strip()
            parameters.append(QueryParam(match["name"], match["default"], help_text))
    return QueryInfo(path.stem, description, tuple(parameters), path)


def _header(text: str) -> list[str]:
    """The text of the comment lines a file opens with, `--` stripped."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped and not lines:
            continue
        if not stripped.startswith("--"):
            break
        lines.append(stripped[2:].strip())
    return lines
