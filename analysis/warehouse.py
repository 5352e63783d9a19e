"""An in-memory DuckDB over a store's Parquet files, with the views of queries/views.sql
(staging) and queries/intermediate.sql (built on them).

For each table of `stepscope.storage.schema` we build `raw_<table>`: every column of the
schema, in its order, each cast to the DuckDB type of its Arrow type (`duckdb_type`), selected
from the store's files UNION ALL BY NAME an empty relation of the schema. So every column is
there with its type even when no file has it yet (an older file, an empty store: null there),
and a file's extra columns are never seen. The views (queries/views.sql) select from those
without naming a column: a column added to the schema shows in them as it is.

Which files are read, and which trials' rows of a compacted file are left out, is
decided once, at `connect`, by the rule every reader shares
(`stepscope.storage.layout.read_plan`): files written later need a new
connection. `raw_summaries` holds the stored summaries of the current SUMMARY_VERSION
(those `stepscope compact` wrote), and `raw_steps_unsummarized` the steps of the
trials without one: the loose steps files, never a compacted steps file whose
compaction's summaries are current, so a compacted store's summaries read a few rows
per trial and no step. A local store's files are read by DuckDB itself (read_parquet over the
listed files); a URI store's (s3://...) through the store's pyarrow filesystem as a
`pyarrow.dataset`: DuckDB's httpfs extension is not something we can count on.

`open_store` also says what the listing found (`StoreContents`): a store that is not there,
one where no sweep has run, one whose files are all skipped. `connect` gives empty views for
all three (a library reader may want them); the CLI refuses them in one line
(`StoreContents.require_results`), since an empty table there reads as "no such rows".
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from stepscope.analysis.queries import views_sql
from stepscope.errors import one_line
from stepscope.storage.layout import (
    GLOB_CHARS,
    Source,
    StoreWarning,
    TableFiles,
    describe_skipped,
    read_plan,
)
from stepscope.storage.schema import SUMMARY_VERSION, TABLES
from stepscope.storage.store import STORE, Store, StoreError


class EmptyStoreError(StoreError):
    """The store holds nothing to query: it is not there, no sweep has run in it, or every
    file of it is skipped. The message is one line naming the store and what to do."""


#: What a store holds, as `StoreContents.state` says it.
MISSING, EMPTY, UNREADABLE, READY = "missing", "empty", "unreadable", "ready"


@dataclass(frozen=True, slots=True)
class StoreContents:
    """What the listing `connect` reads found in a store.

    `sweep_ids`: every sweep with at least one file read, in any table (a sweep whose
    `sweeps` file is damaged still counts by its trials); `skipped`: how many files of
    the store's tables no reader reads (`stepscope store check` names them); `exists`:
    whether the store's location is there at all (a local directory; for a URI store,
    a bucket or prefix holding at least one object, the only way S3 knows a "folder").
    """

    location: str
    exists: bool
    sweep_ids: frozenset[str]
    skipped: int
    #: A URI store's bucket when the bucket itself is not there (a typo in it, most likely).
    missing_bucket: str | None = None

    @property
    def state(self) -> str:
        """READY (some sweep's files are read), UNREADABLE (files there, every one skipped),
        EMPTY (the location is there, no file of any table in it) or MISSING."""
        if self.sweep_ids:
            return READY
        if self.skipped:
            return UNREADABLE
        return EMPTY if self.exists else MISSING

    def require_results(self, named: str | None = None, run_hint: str = "stepscope run SPEC") -> None:
        """Raise EmptyStoreError unless some sweep's files can be read.

        `named`: how the user named the store, for the message (default `store LOCATION`, the
        CLI spelling the field `--store`); `run_hint`: the command that fills it (the CLI adds
        `--store` when one was given).
        """
        name = (named,) if named else (STORE, f" {self.location}")
        elsewhere = ("or point ", STORE, " or STEPSCOPE_STORE at the store a sweep wrote to")
        state = self.state
        if state == MISSING and self.missing_bucket:
            raise EmptyStoreError(*name, f": no store there: bucket {self.missing_bucket!r} does not exist (or "
                                  "these credentials cannot see it); check its name, ", *elsewhere)
        if state == MISSING:
            raise EmptyStoreError(*name, ": no store there (nothing was ever written to it); run a sweep "
                                  f"first ({run_hint}), ", *elsewhere)
        if state == EMPTY:
            raise EmptyStoreError(*name, ": no sweep has run in this store (it holds no results); run one "
                                  f"({run_hint}), ", *elsewhere)
        if state == UNREADABLE:
            raise EmptyStoreError(*name, f": no sweep's files can be read ({self.skipped} file(s) skipped); "
                                  f"see why with: {shlex.join(['stepscope', 'store', 'check', '--store', self.location])}")


@dataclass(frozen=True, slots=True)
class OpenStore:
    """A connection over a store (as `connect` gives it) and what its listing found."""

    con: duckdb.DuckDBPyConnection
    contents: StoreContents


def connect(store: str | Store) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection with the views `sweeps`, `trials`, `steps`,
    `devices`, and `ok_trials`, `measured_steps`, `step_totals` built on them, over
    `store`. A store that does not exist yet gives empty views.

    The views read the files `Store.table_files` lists when `connect` is called (the
    rule every reader shares, in `stepscope.storage.layout`): a file that
    does not fit the store is skipped with a `StoreWarning` naming it (at most a few
    lines, then a count). Raises StoreError for a store that is a file or a table
    folder that cannot be listed.
    """
    return open_store(store).con


def open_store(store: str | Store) -> OpenStore:
    """`connect`, with what the listing found (`StoreContents`): the CLI refuses a store
    that holds no sweep with `contents.require_results()` rather than show empty tables.
    Raises StoreError as `connect` does, and for a URI store whose location cannot be
    looked up (asked only when no table lists a file)."""
    store = store if isinstance(store, Store) else Store(store)
    root = store.local_root
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        raise StoreError(
            STORE, f" {store.location}: is a file, not a directory; give a store directory or a URI"
        )
    listings = {table: store.table_files(table) for table in TABLES}
    return open_listed(store, listings)


def open_listed(store: Store, listings: Mapping[str, TableFiles], *, stored_summaries: bool = True) -> OpenStore:
    """`open_store` over listings already made (`Store.table_files` of every table, maybe of
    some sweeps only), read by `layout.read_plan`. With `stored_summaries=False` the stored
    summaries are not read and every trial is summarised from its steps (raw_summaries is
    empty and raw_steps_unsummarized is raw_steps): what `stepscope compact` stores."""
    root = store.local_root
    plan = read_plan(listings)
    typed = {table: _typed_columns(table) for table in TABLES}  # a type with no DuckDB type raises here
    con = duckdb.connect(":memory:")
    con.execute("set TimeZone = 'UTC'")  # timestamps print the same on every machine
    _private_temp_directory(con)
    relations = {table: plan.sources[table] for table in TABLES}
    # The steps of the trials with no stored summary (computed_summaries summarises them):
    # raw_steps itself when that is all of them (a store never compacted), so that DuckDB
    # does not bind a second relation over the same files.
    unsummarized_is_all = not stored_summaries or plan.unsummarized_steps == plan.sources["steps"]
    if not unsummarized_is_all:
        relations["steps_unsummarized"] = plan.unsummarized_steps
    if not stored_summaries:
        relations["summaries"] = ()
    try:
        for table, schema in TABLES.items():
            con.register(f"_empty_{table}", schema.empty_table())
        for name, sources in relations.items():
            table = "steps" if name == "steps_unsummarized" else name
            parts = [f"select * from _empty_{table}", *_source_selects(con, store, name, table, sources)]
            con.execute(f"create view raw_{name} as select {typed[table]} from ("
                        + " union all by name ".join(parts) + ")")
        if unsummarized_is_all:
            con.execute("create view raw_steps_unsummarized as select * from raw_steps")
    except duckdb.Error as exc:  # a file that changed between the listing and its read
        raise store.error(f"cannot read the store: {one_line(exc, with_type=False)}") from None
    con.execute(views_sql())
    _read_only(con, root)
    skipped = [s for listing in listings.values() for s in listing.skipped]
    for line in describe_skipped(skipped):
        warnings.warn(StoreWarning(line), stacklevel=3)
    if plan.stale_summaries and stored_summaries:
        versions = ", ".join(sorted({str(f.summary_version) for f in plan.stale_summaries}))
        warnings.warn(StoreWarning(
            f"{len(plan.stale_summaries)} summaries file(s) of summary version {versions}, not {SUMMARY_VERSION}, "
            f"are not read (their trials are summarised from their steps, which is slower): run stepscope compact "
            f"to refresh them"), stacklevel=3)
    return OpenStore(con, _contents(store, listings))


#: The DuckDB type each Arrow type of the schema reads as. Narrow integers read as INTEGER (as
#: `phase_index`, an int8, always has), so arithmetic on them never overflows.
_DUCKDB_TYPES = {
    pa.int8(): "integer", pa.int16(): "integer", pa.int32(): "integer", pa.int64(): "bigint",
    pa.float64(): "double", pa.string(): "varchar", pa.bool_(): "boolean",
    pa.list_(pa.float64()): "double[]",
}


def duckdb_type(table: str, field: pa.Field) -> str:
    """The DuckDB type column `field` of `table` reads as in the views. A type with none here
    raises TypeError naming the column: a new type is given its DuckDB type on purpose."""
    arrow = field.type
    if pa.types.is_timestamp(arrow) and arrow.tz is not None and arrow.unit != "ns":
        return "timestamptz"  # an instant, kept to the microsecond (s, ms or us lose nothing)
    try:
        return _DUCKDB_TYPES[arrow]
    except KeyError:
        raise TypeError(f"{table}.{field.name}: no DuckDB type for Arrow type {arrow}; give it one in "
                        f"stepscope.analysis.warehouse._DUCKDB_TYPES") from None


def _typed_columns(table: str) -> str:
    """Every column of `table`'s schema, in order, cast to its DuckDB type: raw_<table>'s select list."""
    return ", ".join(f"cast({sql_identifier(f.name)} as {duckdb_type(table, f)}) as {sql_identifier(f.name)}"
                     for f in TABLES[table])


def _contents(store: Store, listings: Mapping[str, TableFiles]) -> StoreContents:
    sweep_ids = frozenset(sweep_id for listing in listings.values() for sweep_id in listing.sweep_ids)
    skipped = sum(len(listing.skipped) for listing in listings.values())
    if sweep_ids or skipped:
        return StoreContents(store.location, True, sweep_ids, skipped)
    exists = _exists(store, store.filesystem()[1])
    bucket = None
    if not exists and store.local_root is None:  # s3://bucket/prefix: is the bucket there at all?
        head = store.filesystem()[1].split("/", 1)[0]
        bucket = None if _exists(store, head) else head
    return StoreContents(store.location, exists, sweep_ids, skipped, bucket)


def _exists(store: Store, path: str) -> bool:
    """Is `path` of the store's filesystem there? Asked only of a store whose tables list no file."""
    fs, _ = store.filesystem()
    try:
        info = fs.get_file_info(path)
    except OSError as exc:  # an unreachable endpoint, access denied
        raise store.error(one_line(exc, with_type=False)) from None
    return info.type != pafs.FileType.NotFound


def _private_temp_directory(con: duckdb.DuckDBPyConnection) -> None:
    """Spill to a private temporary folder, removed with the connection, instead of
    DuckDB's default `.tmp` in the working directory, which DuckDB would also add to the
    directories a read-only connection may read."""
    path = tempfile.mkdtemp(prefix="stepscope-duckdb-")
    con.execute(f"set temp_directory = {sql_string(path)}")
    weakref.finalize(con, shutil.rmtree, path, True)


def _read_only(con: duckdb.DuckDBPyConnection, root: str | None) -> None:
    """Let this connection read the store and nothing else on the host.

    DuckDB's `enable_external_access = false` refuses every file outside
    `allowed_directories` (reading /etc/passwd, COPY ... TO, ATTACH, INSTALL, EXPORT);
    a local store's directory is the one allowed (its views read it lazily, so files
    written after `connect` still show); a URI store's files are read through pyarrow,
    so none is. `lock_configuration` keeps a statement from turning it back on.
    Writing *into* the store (COPY ... TO inside it) is refused by statement type in
    `stepscope.analysis.queries.run_sql`.
    """
    allowed = [os.path.join(root, "")] if root is not None else []
    con.execute(f"set allowed_directories = [{', '.join(map(sql_string, allowed))}]")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")


def _source_selects(con: duckdb.DuckDBPyConnection, store: Store, name: str, table: str,
                    sources: tuple[Source, ...]) -> list[str]:
    """The selects whose union is what `read_plan` reads of a table: the files without
    excluded trials in one (the normal case: no filter at all), and each file with some in
    one of its own that filters them out by trial_id."""
    local = store.local_root is not None and GLOB_CHARS.isdisjoint(store.local_root)
    # Local files of one shape (all of a table's, but for files of an older schema) are one
    # read_parquet: DuckDB then binds it from one footer, not from every file's, and every
    # view built on it binds it again.
    groups: dict[tuple, list[str]] = {}
    for s in sources:
        if not s.exclude:
            groups.setdefault(s.shape if local and s.shape else (), []).append(s.path)
    parts = [(tuple(files), shape != (), frozenset()) for shape, files in groups.items()]
    parts += [((s.path,), bool(s.shape), s.exclude) for s in sources if s.exclude]
    selects = []
    for i, (files, one_shape, exclude) in enumerate(parts):
        if local:
            relation = _local_files(files, union_by_name=not one_shape)
        else:  # a URI store, or a path DuckDB would read as a pattern: pyarrow reads these files
            relation = _dataset_files(con, store, table, files, f"_files_{name}_{i}")
        where = f" where trial_id not in ({', '.join(map(sql_string, sorted(exclude)))})" if exclude else ""
        selects.append(f"select * from {relation}{where}")
    return selects


def _local_files(files: tuple[str, ...], union_by_name: bool = True) -> str:
    """A read_parquet() call over exactly these files, named one by one (their paths hold
    no glob character: DuckDB would expand it), so hidden files are never read.
    `union_by_name=False` only for files of one shape (same columns, types and order)."""
    paths = "[" + ", ".join(map(sql_string, files)) + "]"
    # sweep_id is a column of every file, so the hive directory names are not needed.
    return f"read_parquet({paths}, union_by_name = {str(union_by_name).lower()}, hive_partitioning = false)"


def sql_string(text: str) -> str:
    """`text` as an SQL string literal (quotes doubled): for the few values that cannot be a
    bound parameter (a view's file list, a setting, a JSON path in a generated expression)."""
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier (quotes doubled): `"repeat"` is a keyword."""
    return '"' + name.replace('"', '""') + '"'


def _dataset_files(con: duckdb.DuckDBPyConnection, store: Store, table: str, files: tuple[str, ...],
                   name: str) -> str:
    """Register these files of `table` of a URI store as a pyarrow dataset called `name`; `name`."""
    fs, _ = store.filesystem()
    # Every field nullable: a file from an older schema lacks some, and reads as null there.
    schema = pa.schema([field.with_nullable(True) for field in TABLES[table]])
    dataset = ds.dataset(list(files), schema=schema, format="parquet", filesystem=fs)
    con.register(name, dataset)
    return name
