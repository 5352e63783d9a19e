"""Write a trial's tables to a store: a local path or a URI that pyarrow.fs understands.

A file appears whole or not at all. On a local (or mounted) filesystem we write
a hidden temporary file beside the target, fsync it, then rename it over the
target, which POSIX makes atomic. On an object store a single PUT is already
atomic: the object is visible whole once the upload completes, never before.

Within a trial the `steps` and `devices` files are written before the `trials` file; the
`trials` row is the commit record (see `stepscope.workloads.storage.schema`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stepscope.errors import StepscopeError, one_line
from stepscope.workloads.storage.layout import TableFiles, TableUnreadable, list_table
from stepscope.workloads.storage.schema import TABLES, check_rows

DEFAULT_STORE = "./stepscope-results"


class StoreError(StepscopeError, RuntimeError):
    """The store cannot be opened or written."""


def resolve_store(store: str | None) -> str:
    """`--store`, else STEPSCOPE_STORE, else ./stepscope-results (the README's "Running sweeps").

    An empty `--store ""` is an error (StoreError), never the default in disguise."""
    if store is not None:
        if not store.strip():
            raise StoreError('--store: empty store location; give a directory or a URI (or leave --store out)')
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
            raise StoreError("--store: empty store location; give a directory or a URI")
        root = None
        if not is_uri(self.location):
            path = self.location.removeprefix("file://")
            root = os.path.abspath(os.path.expanduser(path))
        object.__setattr__(self, "local_root", root)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        root = self.local_root
        if root is not None:
            return pafs.LocalFileSystem(), root
        try:
            fs, path = pafs.FileSystem.from_uri(self.location)
            fs = _bounded(fs)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise StoreError(f"--store {self.location}: {one_line(exc, with_type=False)}") from None
        path = path.rstrip("/")
        if not path:
            raise StoreError(f"--store {self.location}: names no bucket or path; give e.g. s3://bucket/prefix")
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
                raise StoreError(f"--store {self.location}: cannot write {final}: {one_line(exc, with_type=False)}") from None
        else:
            # One object, one upload: S3 shows it only once the upload completes, so a
            # killed writer leaves at most an unfinished (invisible) multipart upload.
            try:
                fs.create_dir(directory, recursive=True)
                pq.write_table(data, final, filesystem=fs)
            except OSError as exc:  # no such bucket, access denied, unreachable endpoint
                raise StoreError(f"--store {self.location}: cannot write {final}: {one_line(exc, with_type=False)}") from None
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

    def table_files(self, table: str) -> TableFiles:
        """The files of `table` every reader reads, and those it skips with a reason
        (`stepscope.workloads.storage.layout`). StoreError when the table's folder
        exists but cannot be listed."""
        fs, root = self.filesystem()
        try:
            return list_table(fs, root, table)
        except TableUnreadable as exc:
            raise StoreError(f"--store {self.location}: {exc}") from None

    def read_rows(self, table: str, columns: Sequence[str]) -> list[dict]:
        """`columns` of every committed-or-not row of `table`, with pyarrow alone (no
        DuckDB: `stepscope trial` must run where only torch and pyarrow are). Reads the
        files `table_files` lists, as the SQL views do (skipped files are not read;
        the views warn about them); a column an older file lacks reads as null."""
        listing = self.table_files(table)
        if not listing.files:
            return []
        fs, _ = self.filesystem()
        schema = pa.schema([TABLES[table].field(c).with_nullable(True) for c in columns])
        try:
            dataset = ds.dataset(list(listing.files), filesystem=fs, format="parquet", schema=schema)
            return dataset.to_table(columns=list(columns)).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"--store {self.location}: cannot read {table}: {one_line(exc, with_type=False)}") from None


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
        raise StoreError(f"--store {store.location}: cannot write {path}: {one_line(exc, with_type=False)}") from None
    try:
        fs.delete_file(path)
    except OSError:  # writing is what trials need; a probe left behind is hidden from readers
        pass
    return path


def _write_local_atomic(data: pa.Table, directory: str, final: str) -> None:
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(final)
    # Hidden and without a .parquet suffix, so no reader's glob ever sees it.
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(data, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
