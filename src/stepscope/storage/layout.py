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

**Compacted files.** `stepscope compact` (`stepscope.analysis.compact`) rewrites a
sweep's per-trial ("loose") files into one file per table, all four of one
compaction named alike::

    STORE/<table>/sweep_id=<sweep_id>/compacted-<UTC yyyymmddTHHMMSSffffff>-<8 hex>.parquet

(tables trials, steps, devices, summaries; the names sort by time). The footer's
key-value metadata holds `stepscope.compacted`, the JSON list of the trial ids in
the file, and for `summaries` `stepscope.summary_version`. Such a file is read
when its footer reads, its schema fits, its rows' `sweep_id` is its partition's
and their distinct `trial_id`s are exactly the footer's list (and, for summaries,
their summary_version the footer's); else it is skipped like any file. The
`summaries` table holds compacted files only: a loose one is skipped.

**Which rows are read** (`read_plan`, the one rule for every reader), per trial T
of a sweep:

- T has a loose `trials` file (a rewrite since the compaction: a retry, a resumed
  sweep's rerun): every table reads T's loose files and none of T's compacted rows;
- else, if a compacted `trials` file holds T: T's rows are read from the files of
  the compaction whose `trials` file holding T sorts last (its "winner"), in
  every table; T's rows in any other compacted file are not read (a compaction
  killed before it deleted the files it replaced), and neither are T's loose
  `steps`/`devices` files (an uncommitted write of a new attempt);
- else (no trials row anywhere: a killed writer's leftover) T's loose files are
  read as before, and the views' commit rule hides them.

Taking every table's rows from the compaction that holds T's trials row (rather
than the last file of each table) keeps a trial's tables of one attempt: a later
compaction that found no `devices` row for T does not leave an older attempt's.
A compacted file's excluded rows are filtered out by `trial_id` when read; in the
normal case nothing is excluded and no filter is added.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stepscope.errors import Field, StepscopeError, one_line
from stepscope.storage.schema import SUMMARY_VERSION, TABLES

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
#: A compacted file's name without .parquet: `compacted-<UTC yyyymmddTHHMMSSffffff>-<8 hex>`.
COMPACTED = re.compile(r"^compacted-\d{8}T\d{12}-[0-9a-f]{8}$")
#: The tables `stepscope compact` writes (sweeps has one file per sweep already).
COMPACTED_TABLES = ("trials", "steps", "devices", "summaries")
#: Footer key-value metadata of a compacted file: the JSON list of its trial ids (sorted) ...
COMPACTED_KEY = "stepscope.compacted"
#: ... and, in a summaries file, the SUMMARY_VERSION its rows were computed by (decimal text).
SUMMARY_VERSION_KEY = "stepscope.summary_version"
#: A file's columns and their types, in order: files of one shape are read as one relation.
Shape = tuple[tuple[str, str], ...]


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
class CompactedFile:
    """A compacted file that fits the store: its path, sweep, name (without .parquet, the
    same for the four files of one compaction), the trial ids its rows hold (its footer's
    list, checked against the rows) and, for summaries, the SUMMARY_VERSION they were
    computed by (None for the other tables)."""

    path: str
    sweep_id: str
    name: str
    trial_ids: frozenset[str]
    summary_version: int | None = None


@dataclass(frozen=True, slots=True)
class TableFiles:
    """The files of one table: the loose (per-trial) files that fit the store (sorted),
    the compacted ones that fit (sorted), those skipped, the temporary ones. Which rows
    of them a reader reads is `read_plan`'s to say."""

    table: str
    files: tuple[str, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    temporary: tuple[TempFile, ...] = ()
    #: (sweep_id, trial_id) of every loose file that fits, in `files` order.
    keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: (sweep_id, file name without .parquet) of every loose data file present, fitting or skipped
    #: (a compacted file's name is no trial's).
    names: frozenset[tuple[str, str]] = field(default=frozenset(), repr=False)
    compacted: tuple[CompactedFile, ...] = ()
    #: The Shape (columns and types, in order) of every file that fits, by path.
    shapes: Mapping[str, Shape] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sweep_ids(self) -> frozenset[str]:
        """Every sweep with a file that fits, loose or compacted."""
        return frozenset(s for s, _ in self.keys) | frozenset(c.sweep_id for c in self.compacted)


class StoreWarning(UserWarning):
    """A file in the store that readers do not read, and why (one line)."""


#: The store as the library names it (`Store(location)`, a reader's `store`): the field of
#: every error about the store (`stepscope.storage.store.StoreError`).
STORE = Field("store")


class TableUnreadable(StepscopeError, RuntimeError):
    """A table's folder exists but cannot be listed (not a directory, no permission)."""


def list_table(fs: pafs.FileSystem, root: str, table: str, sweep_ids: Collection[str] | None = None) -> TableFiles:
    """Every file under `root`/`table`, sorted into read (loose and compacted), skipped
    and temporary; with `sweep_ids`, only those sweeps' partitions are looked into.

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
                              "(move the file away, or point ", STORE, " at another directory)")
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
        if sweep_ids is not None and sweep_id not in sweep_ids:
            continue
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
    compacted: list[CompactedFile] = []
    shapes: dict[str, Shape] = {}
    for (item, sweep_id), (verdict, shape) in zip(candidates, verdicts, strict=True):
        if isinstance(verdict, SkippedFile):
            skipped.append(verdict)
            continue
        shapes[item.path] = shape
        if isinstance(verdict, CompactedFile):
            compacted.append(verdict)
        else:
            files.append(item.path)
            keys.append((sweep_id, verdict))
    names = frozenset((sweep_id, stem) for item, sweep_id in candidates
                      if not COMPACTED.match(stem := item.base_name.removesuffix(".parquet")))
    order = sorted(range(len(files)), key=files.__getitem__)
    return TableFiles(
        table,
        files=tuple(files[i] for i in order),
        skipped=tuple(sorted(skipped, key=lambda s: s.path)),
        temporary=tuple(sorted(temporary, key=lambda t: t.path)),
        keys=tuple(keys[i] for i in order),
        names=names,
        compacted=tuple(sorted(compacted, key=lambda c: c.path)),
        shapes=shapes,
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


def _check_file(fs: pafs.FileSystem, info: pafs.FileInfo, table: str,
                sweep_id: str) -> tuple[str | CompactedFile | SkippedFile, Shape]:
    """(the trial id of a loose file to read ("" for a sweeps file), the CompactedFile of a
    compacted file to read, or the SkippedFile of a file to skip; the file's Shape, () when
    it is skipped)."""
    name = info.base_name

    def skip(reason: str) -> tuple[SkippedFile, Shape]:
        return SkippedFile(info.path, reason), ()

    if info.type != pafs.FileType.File:
        return skip("not a file")
    if not name.endswith(".parquet"):
        return skip("not a .parquet file name")
    stem = name[: -len(".parquet")]
    if table == "sweeps" and stem != SWEEP_STEM:
        return skip(f"a sweeps partition holds only {SWEEP_STEM}.parquet")
    is_compacted = table in COMPACTED_TABLES and COMPACTED.match(stem) is not None
    if table == "summaries" and not is_compacted:
        return skip("the summaries table holds only the files `stepscope compact` writes (compacted-*.parquet)")
    if info.size == 0:
        return skip("empty file (zero bytes), not Parquet")
    try:
        with fs.open_input_file(info.path) as f:
            meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as exc:
        return skip(f"not a readable Parquet file (truncated or damaged: {one_line(exc, limit=160, with_type=False)})")
    problem = _schema_problem(schema, table)
    if problem:
        return skip(problem)
    verdict = _fits(fs, info.path, meta, table, sweep_id, stem, is_compacted)
    if isinstance(verdict, SkippedFile):
        return verdict, ()
    return verdict, tuple((f.name, str(f.type)) for f in schema)


def _fits(fs: pafs.FileSystem, path: str, meta: pq.FileMetaData, table: str, sweep_id: str, stem: str,
          is_compacted: bool) -> str | CompactedFile | SkippedFile:
    """`_check_file`'s verdict on a file whose footer reads and whose schema fits: are its
    rows' keys what its place (and, compacted, its footer) says?"""
    problem = _values_problem(fs, path, meta, "sweep_id", {sweep_id}, f"its partition {PARTITION_PREFIX}{sweep_id}")
    if problem:
        return SkippedFile(path, problem)
    if table == "sweeps":
        return ""
    if not is_compacted:
        problem = _values_problem(fs, path, meta, "trial_id", {stem}, "its file name")
        return SkippedFile(path, problem) if problem else stem
    footer = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (meta.metadata or {}).items()}
    trial_ids = _trial_list(footer.get(COMPACTED_KEY))
    if trial_ids is None:
        return SkippedFile(path, f"a compacted file without a valid {COMPACTED_KEY} list in its footer: "
                                 f"not one stepscope wrote")
    problem = _values_problem(fs, path, meta, "trial_id", trial_ids, f"its footer's {COMPACTED_KEY} list", exact=True)
    if problem:
        return SkippedFile(path, problem)
    version = None
    if table == "summaries":
        text = footer.get(SUMMARY_VERSION_KEY, "")
        if not text.isdigit():
            return SkippedFile(path, f"a compacted summaries file without {SUMMARY_VERSION_KEY} in its footer")
        version = int(text)
        problem = _values_problem(fs, path, meta, "summary_version", {version},
                                  f"its footer's {SUMMARY_VERSION_KEY} ({version})")
        if problem:
            return SkippedFile(path, problem)
    return CompactedFile(path, sweep_id, stem, frozenset(trial_ids), version)


def _trial_list(text: str | None) -> set[str] | None:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return set(value)


def _values_problem(fs: pafs.FileSystem, path: str, meta: pq.FileMetaData, column: str, expected: set,
                    where: str, exact: bool = False) -> str | None:
    """Why the distinct values of `column` are not `expected` (with `exact`: not all of
    them present either), or None when they are. From the footer's statistics when those
    settle it (a key column of a file stepscope wrote), else from the column itself."""
    values = None if exact else _distinct_from_statistics(meta, column)
    if values is None or values - expected:  # no statistics, or (maybe truncated) ones that differ
        values = _distinct_from_column(fs, path, column)
    if values is None:
        return f"cannot read its {column} column"
    if values - expected:
        shown = ", ".join(sorted(repr(v) for v in (values - expected if exact else values))[:3])
        return f"its rows' {column} ({shown}) is not {where}: a copy or a file stepscope did not write"
    if exact and expected - values:
        shown = ", ".join(sorted(repr(v) for v in expected - values)[:3])
        return f"{where} names {column} {shown}, which its rows do not hold: not a file stepscope wrote"
    return None


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
            # As a dictionary: a sorted key column of 10M rows reads in tens of milliseconds.
            col = pq.read_table(f, columns=[column], read_dictionary=[column]).column(0)
        return set(col.unique().to_pylist())
    except (OSError, pa.ArrowException, ValueError):
        return None


def _column_chunk(group: pq.RowGroupMetaData, column: str):
    for c in range(group.num_columns):
        chunk = group.column(c)
        if chunk.path_in_schema == column:
            return chunk.statistics if chunk.is_stats_set else None
    return None


def compacted_stem(after: Iterable[str] = (), now: dt.datetime | None = None) -> str:
    """A new compaction's file name, without .parquet: `compacted-<UTC time to the
    microsecond>-<8 random hex digits>`. It sorts after every name in `after` (the
    partition's compacted files): a clock that went back still makes a later compaction's
    file win."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    latest = max((n for n in after if COMPACTED.match(n)), default=None)
    if latest is not None:
        before = dt.datetime.strptime(latest.split("-")[1], "%Y%m%dT%H%M%S%f")
        stamp = max(stamp, before + dt.timedelta(microseconds=1))
    return f"compacted-{stamp:%Y%m%dT%H%M%S%f}-{os.urandom(4).hex()}"


@dataclass(frozen=True, slots=True)
class Source:
    """A file a reader reads, but for the rows of the trials in `exclude` (filtered out by
    trial_id; only a compacted file has any)."""

    path: str
    exclude: frozenset[str] = frozenset()
    #: Its columns and types (`TableFiles.shapes`): a reader may read files of one shape as one
    #: relation, without matching columns by name file by file. () when not known.
    shape: Shape = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What every reader reads of the tables listed (`read_plan`).

    `sources`: per table, the files and the trials excluded in each. `unsummarized_steps`:
    the `steps` sources of the trials without a stored summary of the current
    SUMMARY_VERSION (the loose steps files, and a compaction's steps file when its
    summaries file is missing or of another version): what the warehouse's
    raw_steps_unsummarized reads. `stale_summaries`: compacted summaries files of another
    SUMMARY_VERSION that would be read otherwise (not read; their trials are summarised from
    their steps until `stepscope compact` runs again).
    """

    sources: Mapping[str, tuple[Source, ...]]
    unsummarized_steps: tuple[Source, ...] = ()
    stale_summaries: tuple[CompactedFile, ...] = ()


def read_plan(listings: Mapping[str, TableFiles]) -> ReadPlan:
    """Which rows of the files `list_table` found every reader reads: the rule in this
    module's docstring. `listings` maps table names to their TableFiles; a table's rows
    depend on the `trials` listing, so every table but `sweeps` needs it there (ValueError
    otherwise). `unsummarized_steps` is filled when `steps` and `summaries` are both given."""
    trials = listings.get("trials")
    if trials is None and set(listings) - {"sweeps"}:
        raise ValueError("read_plan: the trials listing decides every other table's rows; list it too")
    loose = frozenset(trials.keys) if trials is not None else frozenset()
    winner: dict[tuple[str, str], str] = {}  # (sweep, trial) -> the compaction holding its trials row
    for f in sorted(trials.compacted if trials is not None else (), key=lambda c: c.name):
        winner.update(((f.sweep_id, t), f.name) for t in f.trial_ids)

    def excluded(f: CompactedFile) -> frozenset[str]:
        return frozenset(t for t in f.trial_ids
                         if (f.sweep_id, t) in loose or winner.get((f.sweep_id, t)) != f.name)

    sources: dict[str, tuple[Source, ...]] = {}
    stale: list[CompactedFile] = []
    for table, listing in listings.items():
        chosen = [Source(path, shape=listing.shapes.get(path, ()))
                  for path, key in zip(listing.files, listing.keys, strict=True)
                  if table in ("sweeps", "trials") or key in loose or key not in winner]
        for f in listing.compacted:
            exclude = excluded(f)
            if exclude == f.trial_ids:  # none of its rows is read (an empty file, or one replaced)
                continue
            if table == "summaries" and f.summary_version != SUMMARY_VERSION:
                stale.append(f)
                continue
            chosen.append(Source(f.path, exclude, listing.shapes.get(f.path, ())))
        sources[table] = tuple(sorted(chosen, key=lambda s: s.path))
    unsummarized: tuple[Source, ...] = ()
    if "steps" in listings and "summaries" in listings:
        summarized = {(f.sweep_id, f.name) for f in listings["summaries"].compacted
                      if f.summary_version == SUMMARY_VERSION}
        compacted = {f.path: (f.sweep_id, f.name) for f in listings["steps"].compacted}
        # A compacted steps file's rows read are those of trials its own compaction holds the
        # trials row of: summarised by that compaction's summaries file, when it is current.
        unsummarized = tuple(s for s in sources["steps"] if compacted.get(s.path) not in summarized)
    return ReadPlan(sources, unsummarized, tuple(sorted(stale, key=lambda c: c.path)))


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
    # A loose steps file of a trial whose trials row is only in a compacted file is a new
    # attempt that never committed (read_plan reads the compacted rows): an orphan too.
    # Compacted files are never leftovers: their rows are committed trials'.
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
