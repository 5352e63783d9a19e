"""Which files of a store are stepscope's: the one rule every reader uses.

The DuckDB views (`stepscope.analysis.warehouse`), the resume reader
(`Store.read_rows`) and `stepscope store check` all list a table's files here, so
they read the same files and skip the same ones. stepscope writes exactly::

    STORE/<table>/sweep_id=<sweep_id>/<trial_id>.parquet     (trials, steps, devices)
    STORE/sweeps/sweep_id=<sweep_id>/sweep.parquet

A file is read when all of these hold, and otherwise it is *skipped* with a reason
naming it (the readers warn; nothing is read from it):

- it sits at that place, with a `.parquet` name;
- its Parquet footer reads (a zero-byte, truncated or non-Parquet file fails here);
- it has every required column of its table (the schema's non-nullable fields;
  a column added to the schema later is nullable, so older files stay readable),
  and every column of the table that it has carries the schema's type;
- the `sweep_id` in its rows is its partition's, and (but for `sweeps`) the
  `trial_id` in its rows is its file name: a trial file copied under another name
  or into another sweep is not a second copy of that trial.

Hidden names (starting with `.` or `_`: the writer's temporary files, macOS `._x`
files, `_SUCCESS` markers) are never data and never warned about: every reader
ignores them alike. The writer's temporary files are listed apart
(`TableFiles.temporary`) so `stepscope store clean` can remove those a killed
writer left. Torch-free, Ray-free and DuckDB-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stepscope.errors import StepscopeError, one_line
from stepscope.workloads.storage.schema import TABLES

PARTITION_PREFIX = "sweep_id="
#: The one file of a `sweeps` partition.
SWEEP_STEM = "sweep"
#: Characters a reader (DuckDB) expands as a pattern in a path.
GLOB_CHARS = frozenset("*?[]{}")
#: Footers read at once: an object store answers each in a round trip, so listing a
#: large store is bound by latency, not by these threads.
CHECK_THREADS = 16
#: `Store.write`'s temporary name: `.<final name>.<uuid4 hex>.tmp` beside the final file.
TEMPORARY = re.compile(r"^\..+\.parquet\.[0-9a-f]{32}\.tmp$")


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file (or directory) in a table's folder that is not read, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        # A name with a newline or another control character is shown quoted, on one line.
        path = self.path if self.path.isprintable() else ascii(self.path)
        return f"{path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TempFile:
    """A writer's temporary file; `mtime` in seconds since the epoch (None if unknown)."""

    path: str
    mtime: float | None


@dataclass(frozen=True, slots=True)
class TableFiles:
    """The files of one table: those to read (sorted), those skipped, the temporary ones."""

    table: str
    files: tuple[str, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    temporary: tuple[TempFile, ...] = ()
    #: (sweep_id, trial_id) of every file read, in `files` order.
    keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: (sweep_id, file name without .parquet) of every data file present, read or skipped.
    names: frozenset[tuple[str, str]] = field(default=frozenset(), repr=False)


class StoreWarning(UserWarning):
    """A file in the store that readers do not read, and why (one line)."""


class TableUnreadable(StepscopeError, RuntimeError):
    """A table's folder exists but cannot be listed (not a directory, no permission)."""


def list_table(fs: pafs.FileSystem, root: str, table: str) -> TableFiles:
    """Every file under `root`/`table`, sorted into read, skipped and temporary.

    `fs` and `root` as `Store.filesystem()` gives them. A table folder that does not
    exist yet has no files; one that exists but cannot be listed raises
    TableUnreadable naming it: an unreadable table is never an empty one.
    """
    base = f"{root}/{table}"
    info = _info(fs, base)
    if info.type == pafs.FileType.NotFound:
        if isinstance(fs, pafs.LocalFileSystem) and os.path.islink(base):
            raise TableUnreadable(f"{base}: is a link to {os.readlink(base)!r}, which does not exist; "
                                  f"mount or restore it, or remove the link")
        return TableFiles(table)
    if info.type != pafs.FileType.Directory:
        raise TableUnreadable(f"{base}: is not a directory; the store's {table} table must be a folder "
                              f"(move the file away, or point --store at another directory)")
    entries = _listdir(fs, base, table)
    skipped: list[SkippedFile] = _dangling(fs, base, entries)
    temporary: list[TempFile] = []
    candidates: list[tuple[pafs.FileInfo, str]] = []  # (file, its partition's sweep id)
    for entry in entries:
        name = entry.base_name
        if _hidden(name):
            continue
        if entry.type != pafs.FileType.Directory or not name.startswith(PARTITION_PREFIX) or name == PARTITION_PREFIX:
            skipped.append(SkippedFile(entry.path, f"not a sweep partition (stepscope writes {table}/"
                                                   f"{PARTITION_PREFIX}<id>/<name>.parquet)"))
            continue
        sweep_id = name[len(PARTITION_PREFIX):]
        if not GLOB_CHARS.isdisjoint(sweep_id):  # no sweep id stepscope makes; a reader would expand it
            skipped.append(SkippedFile(entry.path, "not a sweep id stepscope writes (it holds a glob character)"))
            continue
        items = _listdir(fs, entry.path, table)
        skipped += _dangling(fs, entry.path, items)
        for item in items:
            if TEMPORARY.match(item.base_name):
                mtime = item.mtime.timestamp() if item.mtime is not None else None
                temporary.append(TempFile(item.path, mtime))
            elif not _hidden(item.base_name):
                candidates.append((item, sweep_id))
    # A footer read per file: in parallel, since on an object store each is a round trip.
    with ThreadPoolExecutor(max_workers=max(1, min(CHECK_THREADS, len(candidates)))) as pool:
        verdicts = list(pool.map(lambda c: _check_file(fs, c[0], table, c[1]), candidates))
    files: list[str] = []
    keys: list[tuple[str, str]] = []
    for (item, sweep_id), (reason, trial_id) in zip(candidates, verdicts, strict=True):
        if reason is None:
            files.append(item.path)
            keys.append((sweep_id, trial_id))
        else:
            skipped.append(SkippedFile(item.path, reason))
    names = frozenset((sweep_id, item.base_name.removesuffix(".parquet")) for item, sweep_id in candidates)
    order = sorted(range(len(files)), key=files.__getitem__)
    return TableFiles(
        table,
        files=tuple(files[i] for i in order),
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
        temporary=tuple(sorted(temporary, key=lambda t: t.path)),
        keys=tuple(keys[i] for i in order),
        names=names,
    )


def _dangling(fs: pafs.FileSystem, directory: str, listed: list[pafs.FileInfo]) -> list[SkippedFile]:
    """Links in a local `directory` whose target is missing: pyarrow's listing leaves them
    out without a word, so they are named here (a partition or a file gone missing)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return []
    seen = {i.base_name for i in listed}
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [
        SkippedFile(os.path.join(directory, n), f"a link to {os.readlink(os.path.join(directory, n))!r}, "
                                                "which does not exist")
        for n in sorted(names)
        if n not in seen and not _hidden(n) and os.path.islink(os.path.join(directory, n))
        and not os.path.exists(os.path.join(directory, n))
    ]


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise TableUnreadable(f"{path}: cannot be read: {one_line(exc, with_type=False)}") from None


def _listdir(fs: pafs.FileSystem, path: str, table: str) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except OSError as exc:  # permission denied, a dangling link, an I/O error
        raise TableUnreadable(f"{path}: cannot list the {table} table's folder: "
                              f"{one_line(exc, with_type=False)}") from None


def _check_file(fs: pafs.FileSystem, info: pafs.FileInfo, table: str, sweep_id: str) -> tuple[str | None, str]:
    """(None, trial_id) for a file to read; (reason, "") for one to skip."""
    name = info.base_name
    if info.type != pafs.FileType.File:
        return "not a file", ""
    if not name.endswith(".parquet"):
        return "not a .parquet file name", ""
    stem = name[: -len(".parquet")]
    if table == "sweeps" and stem != SWEEP_STEM:
        return f"a sweeps partition holds only {SWEEP_STEM}.parquet", ""
    if info.size == 0:
        return "empty file (zero bytes), not Parquet", ""
    try:
        with fs.open_input_file(info.path) as f:
            meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"not a readable Parquet file (truncated or damaged: {one_line(exc, limit=160, with_type=False)})", ""
    problem = _schema_problem(schema, table)
    if problem:
        return problem, ""
    wanted_trial = None if table == "sweeps" else stem
    for column, expected in (("sweep_id", sweep_id), ("trial_id", wanted_trial)):
        if expected is None:
            continue
        values = _distinct_from_statistics(meta, column)
        if values is None or values - {expected}:  # no statistics, or (maybe truncated) ones that differ
            values = _distinct_from_column(fs, info.path, column)
        if values is None:
            return f"cannot read its {column} column", ""
        if values - {expected}:
            shown = ", ".join(sorted(repr(v) for v in values)[:3])
            where = f"its partition {PARTITION_PREFIX}{sweep_id}" if column == "sweep_id" else "its file name"
            return f"its rows' {column} ({shown}) is not {where}: a copy or a file stepscope did not write", ""
    return None, stem if table != "sweeps" else ""


def _schema_problem(schema: pa.Schema, table: str) -> str | None:
    want = TABLES[table]
    missing = [f.name for f in want if not f.nullable and schema.get_field_index(f.name) < 0]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return f"lacks required {table} column(s) {shown}: not a {table} file of this schema"
    for f in want:
        i = schema.get_field_index(f.name)
        if i >= 0 and not _same_type(schema.field(i).type, f.type):
            return f"column {f.name} is {schema.field(i).type}, the {table} table's is {f.type}"
    return None


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    if got == want:
        return True
    if pa.types.is_string(want) or pa.types.is_large_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return False


def _distinct_from_statistics(meta: pq.FileMetaData, column: str) -> set | None:
    """The distinct values of `column` as the row groups' min/max statistics bound them
    (footer only), or None when a row group has none: exact when every group's
    min equals its max, which is the case for a key column of a file stepscope wrote."""
    values: set = set()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if group.num_rows == 0:
            continue
        stats = _column_chunk(group, column)
        if stats is None or not stats.has_min_max or stats.null_count:
            return None
        values.update((stats.min, stats.max))
    return values


def _distinct_from_column(fs: pafs.FileSystem, path: str, column: str) -> set | None:
    try:
        with fs.open_input_file(path) as f:
            col = pq.read_table(f, columns=[column]).column(0)
        return set(col.unique().to_pylist())
    except (OSError, pa.ArrowException, ValueError):
        return None


def _column_chunk(group: pq.RowGroupMetaData, column: str):
    for c in range(group.num_columns):
        chunk = group.column(c)
        if chunk.path_in_schema == column:
            return chunk.statistics if chunk.is_stats_set else None
    return None


def describe_skipped(skipped: Iterable[SkippedFile], limit: int = 5) -> list[str]:
    """Warning lines for skipped files: the first `limit` named, then one line for the rest."""
    items = list(skipped)
    lines = [f"skipped {s}" for s in items[:limit]]
    if len(items) > limit:
        lines.append(f"skipped {len(items) - limit} more file(s) that do not fit the store; "
                     f"`stepscope store check` lists them all")
    return lines


@dataclass(frozen=True, slots=True)
class Leftover:
    """A file a killed writer left: a temporary file, or a `steps`/`devices` file whose
    trial has no `trials` row (its commit record was never written)."""

    path: str
    kind: str  # "temporary" | "orphan"
    mtime: float | None  # seconds since the epoch; None if the filesystem does not say


@dataclass(frozen=True, slots=True)
class StoreReport:
    """What `stepscope store check` shows: per table, the files read and skipped; and the
    leftovers of killed writers, which `stepscope store clean` removes."""

    tables: tuple[TableFiles, ...]
    leftovers: tuple[Leftover, ...]
    #: False while some trials entry is skipped: orphans are then not looked for (see inspect_store).
    orphans_checked: bool = True

    @property
    def skipped(self) -> tuple[SkippedFile, ...]:
        return tuple(s for t in self.tables for s in t.skipped)


def inspect_store(fs: pafs.FileSystem, root: str) -> StoreReport:
    """List every table of the store at `root` and find the leftovers of killed writers.
    Raises TableUnreadable as `list_table` does."""
    tables = {table: list_table(fs, root, table) for table in TABLES}
    # A trial is committed when its trials file is there, read or skipped: the steps of a
    # trial whose trials file is damaged are that trial's data, not a killed writer's leftover.
    committed = set(tables["trials"].names)
    leftovers = [Leftover(t.path, "temporary", t.mtime) for listing in tables.values() for t in listing.temporary]
    # While some trials entry cannot be read (damaged, renamed, a dangling link, a broken
    # partition), no steps file can be called an orphan: its commit record may be that entry.
    orphans_checked = not tables["trials"].skipped
    for table in ("steps", "devices") if orphans_checked else ():
        listing = tables[table]
        orphans = [path for path, key in zip(listing.files, listing.keys, strict=True) if key not in committed]
        infos = fs.get_file_info(orphans) if orphans else []
        leftovers += [Leftover(i.path, "orphan", i.mtime.timestamp() if i.mtime is not None else None) for i in infos]
    return StoreReport(tuple(tables.values()), tuple(sorted(leftovers, key=lambda x: x.path)), orphans_checked)
