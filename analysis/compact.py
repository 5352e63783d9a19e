"""`stepscope compact`: rewrite a sweep's per-trial files into one sorted file per table,
with the per-trial `summaries` rows, so that a store of thousands of trials reads a few
large files and comparisons read a few rows per trial instead of every step.

The files and the rule that reads them are `stepscope.storage.layout`'s
(compacted file names, footers, which rows of which file are read). Compacting a sweep:

1. lists its partitions and opens them (`warehouse.open_listed`) with the stored
   summaries left out, so every committed trial is summarised from its steps;
2. selects the committed trials' rows as the views read them: `trials` one row per
   trial (its latest attempt, the `trials` view's rule), `steps` and `devices` of those
   trials, and `summaries` = `computed_summaries` (queries/intermediate.sql) over all of
   the sweep's committed steps, loose or compacted;
3. writes them, cast to the storage schema and sorted by trial (`Store.write_compacted`,
   atomic), in the order steps, devices, summaries, then trials: the `trials` file is
   the compaction's commit, as a trial's `trials` file is a trial's;
4. deletes, trial by trial, each compacted trial's loose `trials` file (from then on its
   compacted rows are read and its loose steps/devices are not), then its loose steps and
   devices files; then the sweep's older compacted files, which the new ones replace.

Whatever step a crash stops at, the store reads the same trials and rows (the layout's
rule takes a trial's rows from its loose files while its loose `trials` file is there,
else from the compaction whose `trials` file holds it and sorts last).
`tests/analysis/test_compact.py` stops a compaction after each step to hold that.
Files it does not own are left alone: a `steps`/`devices` file of no committed trial (an
interrupted write: `stepscope store clean`'s), a skipped file, a writer's temporary file.

Run it when no sweep is writing to the sweeps it compacts: a loose file that changed
between its read and its deletion (a retry rewrote it) is kept, with its trial's other
loose files, so the newer attempt is still read, but the check and the deletion are two
steps, not one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow.fs as pafs

from stepscope.analysis.sweeps import ALL, KnownSweep, choose
from stepscope.analysis.warehouse import READY, StoreContents, _contents, open_listed
from stepscope.storage.layout import (
    COMPACTED_TABLES,
    PARTITION_PREFIX,
    TableFiles,
    compacted_stem,
    read_plan,
)
from stepscope.storage.schema import SUMMARY_VERSION, TABLES
from stepscope.storage.store import Store, StoreError

#: Rows DuckDB hands over at a time while a compacted file is written (one row group's worth).
BATCH_ROWS = 1_000_000
#: The order a compaction writes its files in: the trials file, its commit, last.
WRITE_ORDER = ("steps", "devices", "summaries", "trials")


def _columns(table: str) -> str:
    return ", ".join(f'"{name}"' for name in TABLES[table].names)


#: The rows of sweep $sweep that a compaction stores, as the views read them (raw_* are the
#: rows layout.read_plan reads; the views' commit and latest-attempt rules applied).
SELECT = {
    "trials": f"""
        select {_columns("trials")} from raw_trials
        where sweep_id = $sweep
        qualify row_number() over (
            partition by trial_id order by attempt desc nulls last, ended_at desc nulls last) = 1
        order by trial_id""",
    "steps": f"""
        select {_columns("steps")} from raw_steps as s
        where s.sweep_id = $sweep
            and exists (select 1 from raw_trials as t where t.sweep_id = s.sweep_id and t.trial_id = s.trial_id)
        order by trial_id, iteration, phase_index""",
    "devices": f"""
        select {_columns("devices")} from raw_devices as d
        where d.sweep_id = $sweep
            and exists (select 1 from raw_trials as t where t.sweep_id = d.sweep_id and t.trial_id = d.trial_id)
        order by trial_id, device_uuid, observed_at""",
    "summaries": f"""
        select *, cast({SUMMARY_VERSION} as integer) as summary_version from computed_summaries
        where sweep_id = $sweep
        order by trial_id, metric""",
}


@dataclass(frozen=True, slots=True)
class SweepWork:
    """A sweep to compact, as its files stand: its committed trials, the files of its
    compacted tables that fit the store (loose and compacted), and how many a compaction
    leaves (its four, and the loose steps/devices files of no committed trial)."""

    sweep_id: str
    trials: int
    files: int
    files_after: int


@dataclass(frozen=True, slots=True)
class CompactionPlan:
    """What `stepscope compact` would do: the store's contents (for the CLI's refusal of
    an empty store), the sweeps to compact and those already compacted."""

    contents: StoreContents
    sweeps: tuple[SweepWork, ...] = ()
    settled: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SweepCompaction:
    """One sweep compacted: its committed trials, the files of its compacted tables before
    and after, the rows written per table, the seconds it took, and the trials whose loose
    files were kept because they changed while it ran."""

    sweep_id: str
    trials: int
    files_before: int
    files_after: int
    rows: Mapping[str, int]
    seconds: float
    kept: tuple[str, ...] = ()


def plan_compaction(store: Store, sweep: str | None = None) -> CompactionPlan:
    """Which sweeps of `store` need compacting: `sweep` selects them as `--sweep` does
    everywhere (`stepscope.analysis.sweeps`: ids, names, 'latest', 'all', comma-separated);
    None, the default, is 'all' (compact tidies every sweep that needs it). A sweep is already
    compacted when no loose `trials` file is left in it and its compacted files are one
    compaction's four, with summaries of the current SUMMARY_VERSION. For a store with no
    sweep (`contents.state` not READY) the plan is empty; SweepError for a sweep that is
    not in the store."""
    listings = {table: store.table_files(table) for table in TABLES}
    contents = _contents(store, listings)
    if contents.state != READY:
        return CompactionPlan(contents)
    stored = sorted(set().union(*(listings[t].sweep_ids for t in COMPACTED_TABLES)))

    def known() -> list[KnownSweep]:  # read only when the selection needs it
        rows = [KnownSweep(r["sweep_id"], r["name"], r["created_at"], True)
                for r in store.read_rows("sweeps", ["sweep_id", "name", "created_at"])]
        with_row = {r.sweep_id for r in rows}
        return rows + [KnownSweep(s) for s in sorted(contents.sweep_ids - with_row)]

    ids = choose(known, sweep, default=ALL)
    chosen = stored if ids is None else ids
    work, settled = [], []
    for sweep_id in chosen:
        state = _state(listings, sweep_id)
        if state is None:
            settled.append(sweep_id)
        else:
            work.append(state)
    return CompactionPlan(contents, tuple(work), tuple(settled))


def _state(listings: Mapping[str, TableFiles], sweep_id: str) -> SweepWork | None:
    """The sweep's work, or None when it is compacted already (or holds no trial)."""
    trials = listings["trials"]
    loose = {t for s, t in trials.keys if s == sweep_id}
    committed = loose | {t for f in trials.compacted if f.sweep_id == sweep_id for t in f.trial_ids}
    files = sum(sum(s == sweep_id for s, _ in listings[t].keys) for t in COMPACTED_TABLES)
    stay = sum(s == sweep_id and t not in loose for table in ("steps", "devices") for s, t in listings[table].keys)
    names: dict[str, set[str]] = {}
    for table in COMPACTED_TABLES:
        for f in listings[table].compacted:
            if f.sweep_id == sweep_id:
                files += 1
                names.setdefault(f.name, set()).add(table)
    current = {f.name for f in listings["summaries"].compacted
               if f.sweep_id == sweep_id and f.summary_version == SUMMARY_VERSION}
    one_compaction = len(names) == 1 and all(tables == set(COMPACTED_TABLES) and name in current
                                             for name, tables in names.items())
    if not loose and (not names or one_compaction):
        return None
    return SweepWork(sweep_id, len(committed), files, stay + len(WRITE_ORDER))


def compact_sweep(store: Store, sweep_id: str, *, after_step: Callable[[str], None] | None = None) -> SweepCompaction:
    """Compact one sweep of `store` (this module's docstring says how). `after_step` is
    called after each file written or deleted, with what was done ("wrote PATH",
    "deleted PATH"): a test stops a compaction there to see what a crash leaves. Raises
    StoreError when the store cannot be read or written."""
    started = time.perf_counter()
    step = after_step or (lambda _: None)
    listings = {table: store.table_files(table, [sweep_id]) for table in TABLES}
    plan = read_plan(listings)
    fs, root = store.filesystem()
    con = open_listed(store, listings, stored_summaries=False).con
    before = _snapshot(fs, root, sweep_id)  # before any row is read: what a changed file is told by
    trials = con.sql(SELECT["trials"], params={"sweep": sweep_id}).to_arrow_table()
    committed = set(trials.column("trial_id").to_pylist())
    compacted = [f for table in COMPACTED_TABLES for f in listings[table].compacted]
    files_before = sum(len(listings[t].files) for t in COMPACTED_TABLES) + len(compacted)
    if not committed:  # only steps of trials that never committed: nothing of theirs is read
        return SweepCompaction(sweep_id, 0, files_before, files_before, {}, time.perf_counter() - started)
    stem = compacted_stem(after=[f.name for f in compacted])
    rows: dict[str, int] = {}
    for table in WRITE_ORDER:
        batches = (trials.to_batches() if table == "trials"
                   else con.sql(SELECT[table], params={"sweep": sweep_id}).to_arrow_reader(BATCH_ROWS))
        version = SUMMARY_VERSION if table == "summaries" else None
        path, rows[table], _ = store.write_compacted(table, sweep_id, stem, batches, summary_version=version)
        step(f"wrote {path}")
    con.close()

    # The loose files whose rows the new files now hold: a committed trial's loose trials
    # file, and the loose steps/devices files read with it (read_plan's sources).
    loose = {table: {key[1]: path for path, key in zip(listings[table].files, listings[table].keys, strict=True)}
             for table in ("trials", "steps", "devices")}
    read = {source.path for table in ("steps", "devices") for source in plan.sources[table]}
    now = _snapshot(fs, root, sweep_id)
    deleted, kept = 0, []
    mine = {}
    for trial_id in sorted(committed & set(loose["trials"])):
        paths = [loose["trials"][trial_id]] + [loose[t][trial_id] for t in ("steps", "devices")
                                               if loose[t].get(trial_id) in read]
        if any(now.get(p) != before.get(p) for p in paths):  # rewritten since it was read: a retry's
            kept.append(trial_id)
        else:
            mine[trial_id] = paths
    # A trial's trials file first: once it is gone the trial's compacted rows are read, and
    # its loose steps and devices files no longer are (a crash here leaves them to
    # `stepscope store clean`, as any steps file without its trials file).
    for paths in mine.values():
        for path in paths:
            deleted += store.delete_file(path)
            step(f"deleted {path}")
    for f in compacted:  # older compactions: the new files hold every row of theirs still read
        deleted += store.delete_file(f.path)
        step(f"deleted {f.path}")
    return SweepCompaction(sweep_id, len(committed), files_before, files_before - deleted + len(WRITE_ORDER),
                           rows, time.perf_counter() - started, tuple(kept))


def _snapshot(fs: pafs.FileSystem, root: str, sweep_id: str) -> dict[str, tuple[int | None, object]]:
    """Size and modification time of each file in the sweep's loose-file partitions: one
    listing per table (a round trip per table on an object store, not one per file)."""
    found: dict[str, tuple[int | None, object]] = {}
    for table in ("trials", "steps", "devices"):
        selector = pafs.FileSelector(f"{root}/{table}/{PARTITION_PREFIX}{sweep_id}", allow_not_found=True)
        try:
            infos = fs.get_file_info(selector)
        except OSError as exc:
            raise StoreError(f"cannot list {selector.base_dir}: {exc}") from None
        found.update((i.path, (i.size, i.mtime_ns if i.mtime_ns is not None else i.mtime)) for i in infos)
    return found


def compact(store: Store, sweep: str | None = None) -> list[SweepCompaction]:
    """Compact every sweep `plan_compaction` picks; [] for a store with no sweep."""
    return [compact_sweep(store, work.sweep_id) for work in plan_compaction(store, sweep).sweeps]

