"""Write a trial's tables to a store: a local path or a URI that pyarrow.fs understands.

A file appears whole or not at all. On a local (or mounted) filesystem we write
a hidden temporary file beside the target, fsync it, then rename it over the
target, which POSIX makes atomic. On an object store a single PUT is already
atomic: the object is visible whole once the upload completes, never before.

Within a trial the `steps` and `devices` files are written before the `trials` file; the
`trials` row is the commit record (see `stepscope.storage.schema`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stepscope.errors import StepscopeError, one_line
from stepscope.storage.layout import (
    COMPACTED,
    COMPACTED_KEY,
    COMPACTED_TABLES,
    STORE,
    SUMMARY_VERSION_KEY,
    Source,
    TableFiles,
    TableUnreadable,
    list_table,
    read_plan,
)
from stepscope.storage.schema import TABLES, check_rows

DEFAULT_STORE = "./stepscope-results"
#: Rows per row group of a compacted file: large enough that a reader's per-group cost is
#: noise, small enough that a filter on a key skips most of a large file by its statistics.
COMPACTED_ROW_GROUP_ROWS = 1_000_000


class StoreError(StepscopeError, RuntimeError):
    """The store cannot be opened or written."""


def resolve_store(store: str | None) -> str:
    """`store`, else STEPSCOPE_STORE, else ./stepscope-results (docs/running.md): what the
    CLI's `--store` takes.

    An empty `store` is an error (StoreError), never the default in disguise."""
    if store is not None:
        if not store.strip():
            raise StoreError(STORE, ": empty store location; give a directory or a URI (or leave ", STORE, " out)")
        return store
    return os.environ.get("STEPSCOPE_STORE") or DEFAULT_STORE


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class Store:
    """Where results live. `location` is what the user typed: a path or a URI."""

    location: str
    #: The absolute directory of a local store (None for a URI store), resolved once,
    #: when the store is named: workers elsewhere, or a driver whose working
    #: directory has changed, must write to the same place.
    local_root: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.location:
            raise StoreError(STORE, ": empty store location; give a directory or a URI")
        root = None
        if not is_uri(self.location):
            path = self.location.removeprefix("file://")
            root = os.path.abspath(os.path.expanduser(path))
        object.__setattr__(self, "local_root", root)

    def error(self, *detail: str | StepscopeError) -> StoreError:
        """A StoreError about this store: `store LOCATION: ` and then `detail` (parts, as
        `StepscopeError` takes them)."""
        return StoreError(STORE, f" {self.location}: ", *detail)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        root = self.local_root
        if root is not None:
            return pafs.LocalFileSystem(), root
        try:
            fs, path = pafs.FileSystem.from_uri(self.location)
            fs = _bounded(fs)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise self.error(one_line(exc, with_type=False)) from None
        path = path.rstrip("/")
        if not path:
            raise self.error("names no bucket or path; give e.g. s3://bucket/prefix")
        return fs, path

    def partition_dir(self, table: str, sweep_id: str) -> str:
        _, root = self.filesystem()
        return f"{root}/{table}/sweep_id={sweep_id}"

    def write(self, table: str, sweep_id: str, stem: str, rows: Sequence[dict]) -> str:
        """Write `rows` of `table` as one Parquet file named `stem`.parquet; return its path."""
        data = check_rows(table, list(rows))
        fs, root = self.filesystem()
        directory = f"{root}/{table}/sweep_id={sweep_id}"
        final = f"{directory}/{stem}.parquet"
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                _write_local_atomic(data, directory, final)
            except OSError as exc:  # a file where a folder should be, a full disk, a read-only mount
                raise self.error(f"cannot write {final}: {one_line(exc, with_type=False)}") from None
        else:
            # One object, one upload: S3 shows it only once the upload completes, so a
            # killed writer leaves at most an unfinished (invisible) multipart upload.
            try:
                fs.create_dir(directory, recursive=True)
                pq.write_table(data, final, filesystem=fs)
            except OSError as exc:  # no such bucket, access denied, unreachable endpoint
                raise self.error(f"cannot write {final}: {one_line(exc, with_type=False)}") from None
        return final

    def write_trial(self, sweep_id: str, trial_id: str, trial_row: dict, step_rows: Sequence[dict],
                    device_rows: Sequence[dict] = ()) -> None:
        """Steps and the device first, then the trials row that commits them."""
        self.write("steps", sweep_id, trial_id, step_rows)
        if device_rows:
            self.write("devices", sweep_id, trial_id, device_rows)
        self.write("trials", sweep_id, trial_id, [trial_row])

    def write_sweep(self, row: dict) -> None:
        self.write("sweeps", row["sweep_id"], "sweep", [row])

    def write_compacted(self, table: str, sweep_id: str, stem: str, batches: Iterable[pa.RecordBatch],
                        summary_version: int | None = None) -> tuple[str, int, frozenset[str]]:
        """Write `batches` (rows of `table`, of sweep `sweep_id`, in the order to store) as the
        compacted file `stem`.parquet (`stepscope.storage.layout`): cast to the
        table's schema, in row groups of COMPACTED_ROW_GROUP_ROWS, its trial ids in the
        footer (and `summary_version`, which summaries rows must all carry). Atomic as
        `write` is: a hidden temporary file renamed over the name locally, one upload on an
        object store. Returns (path, rows, trial ids). ValueError for rows of another sweep
        or version, or a name that is no compacted file's; StoreError when it cannot write."""
        if table not in COMPACTED_TABLES or not COMPACTED.match(stem):
            raise ValueError(f"write_compacted: {table}/{stem} is no compacted file (see layout.COMPACTED)")
        if (table == "summaries") != (summary_version is not None):
            raise ValueError("write_compacted: a summary_version goes with the summaries table, and only there")
        schema = TABLES[table]
        fs, root = self.filesystem()
        directory = f"{root}/{table}/sweep_id={sweep_id}"
        final = f"{directory}/{stem}.parquet"
        trial_ids: set[str] = set()
        rows = 0

        def checked() -> Iterable[pa.Table]:
            """The rows, checked, in tables of COMPACTED_ROW_GROUP_ROWS rows (the last one fewer)."""
            nonlocal rows
            pending: list[pa.Table] = []
            pending_rows = 0
            for batch in batches:
                batch = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                if batch.num_rows == 0:
                    continue
                sweeps = set(pc.unique(batch.column("sweep_id")).to_pylist())
                if sweeps != {sweep_id}:
                    raise ValueError(f"write_compacted: {table} rows of sweep(s) {sorted(map(str, sweeps))} "
                                     f"in sweep {sweep_id}'s file")
                if summary_version is not None and set(pc.unique(batch.column("summary_version")).to_pylist()) != {summary_version}:
                    raise ValueError(f"write_compacted: summaries rows of another version than {summary_version}")
                trial_ids.update(pc.unique(batch.column("trial_id")).to_pylist())
                rows += batch.num_rows
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= COMPACTED_ROW_GROUP_ROWS:
                    full = pa.concat_tables(pending)
                    yield full.slice(0, COMPACTED_ROW_GROUP_ROWS)
                    pending = [full.slice(COMPACTED_ROW_GROUP_ROWS)]
                    pending_rows -= COMPACTED_ROW_GROUP_ROWS
            if pending_rows:
                yield pa.concat_tables(pending)

        def write(sink) -> None:
            with pq.ParquetWriter(sink, schema) as writer:
                for part in checked():
                    writer.write_table(part, row_group_size=COMPACTED_ROW_GROUP_ROWS)
                footer = {COMPACTED_KEY: json.dumps(sorted(trial_ids))}
                if summary_version is not None:
                    footer[SUMMARY_VERSION_KEY] = str(summary_version)
                writer.add_key_value_metadata(footer)  # known once every row is seen

        try:
            if isinstance(fs, pafs.LocalFileSystem):
                _write_local_atomic(write, directory, final)
            else:
                # Built in memory, then one upload: an object store shows it whole or not at all.
                buffer = pa.BufferOutputStream()
                write(buffer)
                fs.create_dir(directory, recursive=True)
                with fs.open_output_stream(final) as out:
                    out.write(buffer.getvalue())
        except OSError as exc:
            raise self.error(f"cannot write {final}: {one_line(exc, with_type=False)}") from None
        return final, rows, frozenset(trial_ids)

    def delete_file(self, path: str) -> bool:
        """Delete one file of the store (a path `table_files` gave); False if it was gone
        already. StoreError when it cannot be deleted."""
        fs, _ = self.filesystem()
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self.error(f"cannot delete {path}: {one_line(exc, with_type=False)}") from None
        return True

    def table_files(self, table: str, sweep_ids: Collection[str] | None = None) -> TableFiles:
        """The files of `table` that fit the store, and those skipped with a reason
        (`stepscope.storage.layout`); with `sweep_ids`, of those sweeps only.
        Which rows of them are read is `layout.read_plan`'s to say. StoreError when the
        table's folder exists but cannot be listed."""
        fs, root = self.filesystem()
        try:
            return list_table(fs, root, table, sweep_ids)
        except TableUnreadable as exc:
            raise self.error(exc) from None

    def read_rows(self, table: str, columns: Sequence[str]) -> list[dict]:
        """`columns` of every committed-or-not row of `table`, with pyarrow alone (no
        DuckDB: `stepscope trial` must run where only torch and pyarrow are). Reads the
        rows `layout.read_plan` names, as the SQL views do (skipped files are not read;
        the views warn about them); a column an older file lacks reads as null."""
        listings = {table: self.table_files(table)}
        if table != "sweeps" and table != "trials":
            listings["trials"] = self.table_files("trials")
        sources = read_plan(listings).sources[table]
        if not sources:
            return []
        fs, _ = self.filesystem()
        try:
            return _read_sources(fs, table, sources, list(columns)).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise self.error(f"cannot read {table}: {one_line(exc, with_type=False)}") from None


def _read_sources(fs: pafs.FileSystem, table: str, sources: Sequence[Source], columns: list[str]) -> pa.Table:
    """`columns` of these sources' rows: the files without exclusions as one dataset, each
    file with some as its own, filtered by trial_id."""
    wanted = columns if "trial_id" in columns or not any(s.exclude for s in sources) else [*columns, "trial_id"]
    schema = pa.schema([TABLES[table].field(c).with_nullable(True) for c in wanted])
    whole = [s.path for s in sources if not s.exclude]
    parts = []
    if whole:
        parts.append(ds.dataset(whole, filesystem=fs, format="parquet", schema=schema).to_table(columns=columns))
    for source in sources:
        if source.exclude:
            dataset = ds.dataset([source.path], filesystem=fs, format="parquet", schema=schema)
            keep = ~pc.field("trial_id").isin(sorted(source.exclude))
            parts.append(dataset.to_table(columns=columns, filter=keep))
    return pa.concat_tables(parts)


#: S3 requests give up within seconds when the endpoint is unreachable, instead of the
#: minutes the AWS SDK's own retries take (a closed port, a firewall that drops packets,
#: a server that accepts and never answers). `connect_timeout` covers TCP and TLS setup;
#: the AWS SDK's default is 1 s, which a slow link can miss, hence 3. `request_timeout`
#: is the SDK's default, 3 s, made explicit: pyarrow passes it on on Windows and macOS
#: only; on Linux the SDK's curl client aborts a transfer that moves less than 1 byte/s
#: for those 3 s anyway. 3 attempts: the default of the AWS SDKs' "standard" retry mode
#: (AWS SDKs and Tools Reference Guide, "Retry behavior"), with its backoff. Worst case
#: for one request: about 3 x 3 s plus backoff, so a few seconds to a dozen.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 3.0
S3_MAX_ATTEMPTS = 3


def _bounded(fs: pafs.FileSystem) -> pafs.FileSystem:
    """`fs` with bounded timeouts and retries, if it is S3; every option the URI set
    (region, endpoint_override, scheme, ...) kept. pyarrow's S3 URIs take no timeout
    options, so these cannot clash with the user's."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    _, (options,) = fs.__reduce__()  # the options it was built with, as pickling keeps them
    options.update(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        request_timeout=S3_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
    )
    return pafs.S3FileSystem(**options)


#: Where `probe_write` puts its objects: a hidden name at the store's root, which no
#: reader reads (readers skip names that start with "_" or ".").
PROBE_DIR = "_probe"


def probe_write(store: Store, name: str) -> str:
    """Write a small object `<root>/_probe/<name>` and delete it: can this process write
    `store`? Returns its path; raises StoreError naming the store and why not."""
    fs, root = store.filesystem()
    path = f"{root}/{PROBE_DIR}/{name}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(f"{root}/{PROBE_DIR}", recursive=True)  # an object store needs none
        with fs.open_output_stream(path) as out:
            out.write(b"stepscope store probe\n")
    except OSError as exc:  # no such bucket, access denied, unreachable endpoint, read-only mount
        raise store.error(f"cannot write {path}: {one_line(exc, with_type=False)}") from None
    try:
        fs.delete_file(path)
    except OSError:  # writing is what trials need; a probe left behind is hidden from readers
        pass
    return path


def _write_local_atomic(data, directory: str, final: str) -> None:
    """`data`: a pa.Table, or a function that writes the file's bytes to the open file it is given."""
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(final)
    # Hidden and without a .parquet suffix, so no reader's glob ever sees it.
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, pa.Table):
                pq.write_table(data, f)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
