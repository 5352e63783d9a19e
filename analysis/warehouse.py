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
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import weakref

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from stepscope.analysis.queries import views_sql
from stepscope.errors import one_line
from stepscope.workloads.storage.layout import GLOB_CHARS, StoreWarning, describe_skipped
from stepscope.workloads.storage.schema import TABLES
from stepscope.workloads.storage.store import Store, StoreError


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
    con.execute(views_sql())
    _read_only(con, root)
    skipped = [s for listing in listings.values() for s in listing.skipped]
    for line in describe_skipped(skipped):
        warnings.warn(StoreWarning(line), stacklevel=2)
    return con


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
