"""An in-memory DuckDB over a store's Parquet files, with the views of queries/views.sql
(staging) and queries/intermediate.sql (built on them).

For each table of `stepscope.workloads.storage.schema` we build `raw_<table>`: the store's files
UNION ALL BY NAME an empty relation of the current schema, so every column is
there with its type even when no file has it yet (an older file, an empty
store). The views then rename and cast from those.

Which files are read is decided once, at `connect`, by the rule every reader
shares (`stepscope.workloads.storage.layout`): files written later need a new
connection. A local store's files are read by DuckDB itself (read_parquet over the
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
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from stepscope.analysis.queries import views_sql
from stepscope.errors import one_line
from stepscope.workloads.storage.layout import (
    GLOB_CHARS,
    StoreWarning,
    TableFiles,
    describe_skipped,
)
from stepscope.workloads.storage.schema import TABLES
from stepscope.workloads.storage.store import Store, StoreError


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

        `named`: how the user named the store, for the message (default `--store LOCATION`);
        `run_hint`: the command that fills it (the CLI adds `--store` when one was given).
        """
        named = named or f"--store {self.location}"
        elsewhere = "or point --store or STEPSCOPE_STORE at the store a sweep wrote to"
        state = self.state
        if state == MISSING and self.missing_bucket:
            raise EmptyStoreError(f"{named}: no store there: bucket {self.missing_bucket!r} does not exist (or "
                                  f"these credentials cannot see it); check its name, {elsewhere}")
        if state == MISSING:
            raise EmptyStoreError(f"{named}: no store there (nothing was ever written to it); run a sweep "
                                  f"first ({run_hint}), {elsewhere}")
        if state == EMPTY:
            raise EmptyStoreError(f"{named}: no sweep has run in this store (it holds no results); run one "
                                  f"({run_hint}), {elsewhere}")
        if state == UNREADABLE:
            raise EmptyStoreError(f"{named}: no sweep's files can be read ({self.skipped} file(s) skipped); "
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
    rule every reader shares, in `stepscope.workloads.storage.layout`): a file that
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
            f"--store {store.location}: is a file, not a directory; give a store directory or a URI"
        )
    listings = {table: store.table_files(table) for table in TABLES}
    con = duckdb.connect(":memory:")
    con.execute("set TimeZone = 'UTC'")  # timestamps print the same on every machine
    _private_temp_directory(con)
    try:
        for table, schema in TABLES.items():
            con.register(f"_empty_{table}", schema.empty_table())
            files = listings[table].files
            if not files:
                source = None
            elif root is not None and GLOB_CHARS.isdisjoint(root):
                source = _local_files(files)
            else:  # a URI store, or a path DuckDB would read as a pattern: pyarrow reads these files
                source = _dataset_files(con, store, table, files)
            union = f" union all by name select * from {source}" if source else ""
            con.execute(f"create view raw_{table} as select * from _empty_{table}{union}")
    except duckdb.Error as exc:  # a file that changed between the listing and its read
        raise StoreError(f"--store {store.location}: cannot read the store: {one_line(exc, with_type=False)}") from None
    # The steps of trials with no stored summary (trial_summaries computes theirs).
    con.execute("create view raw_steps_unsummarized as select * from raw_steps")
    con.execute(views_sql())
    _read_only(con, root)
    skipped = [s for listing in listings.values() for s in listing.skipped]
    for line in describe_skipped(skipped):
        warnings.warn(StoreWarning(line), stacklevel=2)
    return OpenStore(con, _contents(store, listings))


def _contents(store: Store, listings: dict[str, TableFiles]) -> StoreContents:
    sweep_ids = frozenset(sweep_id for listing in listings.values() for sweep_id, _ in listing.keys)
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
        raise StoreError(f"--store {store.location}: {one_line(exc, with_type=False)}") from None
    return info.type != pafs.FileType.NotFound


def _private_temp_directory(con: duckdb.DuckDBPyConnection) -> None:
    """Spill to a private temporary folder, removed with the connection, instead of
    DuckDB's default `.tmp` in the working directory, which DuckDB would also add to the
    directories a read-only connection may read."""
    path = tempfile.mkdtemp(prefix="stepscope-duckdb-")
    con.execute(f"set temp_directory = {_sql_string(path)}")
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
    con.execute(f"set allowed_directories = [{', '.join(map(_sql_string, allowed))}]")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")


def _local_files(files: tuple[str, ...]) -> str:
    """A read_parquet() call over exactly these files, named one by one (their paths hold
    no glob character: DuckDB would expand it), so hidden files are never read."""
    paths = "[" + ", ".join(map(_sql_string, files)) + "]"
    # sweep_id is a column of every file, so the hive directory names are not needed.
    return f"read_parquet({paths}, union_by_name = true, hive_partitioning = false)"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _dataset_files(con: duckdb.DuckDBPyConnection, store: Store, table: str, files: tuple[str, ...]) -> str:
    """Register these files of a URI store as a pyarrow dataset; its name."""
    fs, _ = store.filesystem()
    # Every field nullable: a file from an older schema lacks some, and reads as null there.
    schema = pa.schema([field.with_nullable(True) for field in TABLES[table]])
    dataset = ds.dataset(list(files), schema=schema, format="parquet", filesystem=fs)
    con.register(f"_files_{table}", dataset)
    return f"_files_{table}"
