"""An in-memory DuckDB over a store's Parquet files, with the views of queries/views.sql
(staging) and queries/intermediate.sql (built on them).

For each table of `stepscope.workloads.storage.schema` we build `raw_<table>`: the store's files
UNION ALL BY NAME an empty relation of the current schema, so every column is
there with its type even when no file has it yet (an older file, an empty
store). The views then rename and cast from those.

A local store is read by DuckDB itself, through a glob, so files written after
`connect` show up too. A URI store (s3://...) is read through the store's
pyarrow filesystem as a `pyarrow.dataset` over the files listed at `connect`:
DuckDB's httpfs extension is not something we can count on.
"""

from __future__ import annotations

import glob
import os

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from stepscope.analysis.queries import views_sql
from stepscope.workloads.storage.schema import TABLES
from stepscope.workloads.storage.store import Store, StoreError

_GLOB_CHARS = frozenset("*?[]{}")


def connect(store: str | Store) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection with the views `sweeps`, `trials`, `steps`,
    `devices`, and `ok_trials`, `measured_steps`, `step_totals` built on them, over
    `store`. A store that does not exist yet gives empty views."""
    store = store if isinstance(store, Store) else Store(store)
    root = store.local_root
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        raise StoreError(
            f"--store {store.location}: is a file, not a directory; give a store directory or a URI"
        )
    con = duckdb.connect(":memory:")
    con.execute("set TimeZone = 'UTC'")  # timestamps print the same on every machine
    for table, schema in TABLES.items():
        con.register(f"_empty_{table}", schema.empty_table())
        if root is not None:
            files = _local_files(root, table)
        else:
            files = _dataset_files(con, store, table)
        union = f" union all by name select * from {files}" if files else ""
        con.execute(f"create view raw_{table} as select * from _empty_{table}{union}")
    con.execute(views_sql())
    _read_only(con, root)
    return con


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


def _local_files(root: str, table: str) -> str | None:
    """A read_parquet() call over the table's files, or None when it has none yet."""
    table_dir = os.path.join(root, table)
    files = sorted(glob.glob(os.path.join(glob.escape(table_dir), "*", "*.parquet")))
    if not files:
        return None  # read_parquet() refuses a pattern that matches nothing
    if _GLOB_CHARS.isdisjoint(table_dir):
        paths = _sql_string(os.path.join(table_dir, "*", "*.parquet"))
    else:  # the directory itself would read as a pattern: name the files instead
        paths = "[" + ", ".join(map(_sql_string, files)) + "]"
    # sweep_id is a column of every file, so the hive directory names are not needed.
    return f"read_parquet({paths}, union_by_name = true, hive_partitioning = false)"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _dataset_files(con: duckdb.DuckDBPyConnection, store: Store, table: str) -> str | None:
    """Register the table's files as a pyarrow dataset; its name, or None when it has none."""
    fs, root = store.filesystem()
    base = f"{root}/{table}"
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    try:
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise StoreError(f"--store {store.location}: {exc}") from None
    paths = sorted(info.path for info in infos if _is_data_file(info, base))
    if not paths:
        return None
    # Every field nullable: a file from an older schema lacks some, and reads as null there.
    schema = pa.schema([field.with_nullable(True) for field in TABLES[table]])
    dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=fs)
    con.register(f"_files_{table}", dataset)
    return f"_files_{table}"


def _is_data_file(info: pafs.FileInfo, base: str) -> bool:
    """<table>/<partition>/<name>.parquet, not a hidden temporary file."""
    relative = info.path[len(base) :].lstrip("/")
    name = relative.rsplit("/", 1)[-1]
    return (
        info.type == pafs.FileType.File
        and relative.count("/") == 1
        and name.endswith(".parquet")
        and not name.startswith(".")
    )
