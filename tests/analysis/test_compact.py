"""`stepscope compact` (stepscope.analysis.compact) and the layout rule that reads compacted files
(stepscope.storage.layout.read_plan): real Parquet files, real DuckDB, real pyarrow.

What a store reads is taken before a compaction (every view, every named query) and held
against what it reads after it, after a compaction stopped at each of its steps, and after
files written since; the stored summaries are held against the SQL that computes them and
against numpy.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepscope.analysis.compact import compact_sweep, plan_compaction
from stepscope.analysis.queries import list_queries, run_query
from stepscope.analysis.warehouse import connect, open_listed
from stepscope.storage.layout import (
    COMPACTED_KEY,
    SUMMARY_VERSION_KEY,
    StoreWarning,
    inspect_store,
)
from stepscope.storage.schema import PHASES, SUMMARY_VERSION, TABLES
from stepscope.storage.store import Store

VIEWS = ("sweeps", "trials", "steps", "devices", "trial_summaries", "trial_step_stats")


class Stop(Exception):
    """Raised from `after_step`: the compaction dies there, as a killed process would."""


def snapshot(store: Store, queries: bool = False) -> dict:
    """Every row every view reads (and, with `queries`, every named query's output over all sweeps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)  # a compaction's file is never skipped
        con = connect(store)
    seen = {view: con.execute(f"select * from {view} order by all").fetchall() for view in VIEWS}
    if queries:
        for query in list_queries():
            params = {p.name: "all" for p in query.parameters if p.name == "sweep"}
            seen[f"query {query.name}"] = run_query(con, query.name, params)
    return seen


def same(a, b) -> bool:
    """a == b, exactly, element by element (NaN aside). The views' order-sensitive
    aggregates (stddev_samp) are ordered (`order by iteration`), so the same rows read from
    per-trial files and from one sorted file give the same bits."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def data_files(store: Store) -> dict[str, list[str]]:
    """table -> the .parquet names under it (hidden names aside), sorted."""
    root = Path(store.local_root)
    return {table: sorted(p.name for p in (root / table).glob("sweep_id=*/*.parquet") if not p.name.startswith("."))
            for table in ("trials", "steps", "devices", "summaries")}


def durations(seed: int, n: int, outlier_at: int | None = None) -> dict[str, list[float]]:
    """Per-phase durations (ms) of `n` steps, multiples of 1/8 so that every sum is exact."""
    rng = np.random.default_rng(seed)
    out = {phase: [float(v) / 8 for v in rng.integers(4, 40, n)] for phase in PHASES}
    if outlier_at is not None:
        out["forward"][outlier_at] = 400.0
    return out


def fill(store: Store, write, rows) -> None:
    """Two sweeps: ok trials of two workloads and precisions, an oom and a failed one, devices,
    and a steps file whose trial never committed (an interrupted write)."""
    write.sweep("s1", rows.T0)
    write.sweep("s2", rows.T0 + timedelta(hours=1))
    for i, (workload, precision, status) in enumerate([("mlp", "fp32", "ok"), ("mlp", "bf16", "ok"),
                                                       ("resnet", "fp32", "ok"), ("resnet", "fp32", "oom"),
                                                       ("mlp", "fp32", "failed")]):
        for sweep in ("s1", "s2"):
            trial_id = f"{sweep}-t{i}"
            write.trial(sweep, trial_id, durations(i + 10 * (sweep == "s2"), 9, outlier_at=4 if i == 0 else None),
                        warmup=2, trial_index=i, workload=workload, precision=precision, status=status,
                        config_id=f"c-{workload}-{precision}-{i}", batch_size=16 * (1 + i % 2))
            store.write("devices", sweep, trial_id, [rows.device(sweep, trial_id, f"CPU-{trial_id}")])
    store.write("steps", "s1", "orphan", rows.steps("s1", "orphan", {"forward": [9.0]}))


def compact_all(store: Store) -> list:
    return [compact_sweep(store, work.sweep_id) for work in plan_compaction(store).sweeps]


def test_views_and_every_named_query_read_the_same_after_compaction(store, write, rows):
    fill(store, write, rows)
    before = snapshot(store, queries=True)
    assert len(before["trials"]) == 10 and len(before["steps"]) == 10 * 9 * 6

    done = compact_all(store)

    assert [(d.sweep_id, d.trials, d.files_before, d.files_after) for d in done] == [
        ("s1", 5, 16, 5), ("s2", 5, 15, 4)]  # 5 trials, steps and devices files each; s1's orphan stays
    assert [d.rows for d in done] == [{"steps": 270, "devices": 5, "summaries": 5 * 9, "trials": 5}] * 2
    after = snapshot(store, queries=True)
    assert same(after, before)
    assert {k: v for k, v in after.items() if k in ("trials", "steps", "devices", "sweeps")} == {
        k: v for k, v in before.items() if k in ("trials", "steps", "devices", "sweeps")}  # exactly
    files = data_files(store)
    assert files["steps"].count("orphan.parquet") == 1  # an interrupted write is store clean's, not ours
    assert {t: len([n for n in names if n.startswith("compacted-")]) for t, names in files.items()} == {
        "trials": 2, "steps": 2, "devices": 2, "summaries": 2}
    assert [n for t in ("trials", "devices", "summaries") for n in files[t] if not n.startswith("compacted-")] == []
    # The four files of one compaction share a name; a second run finds nothing to do.
    assert len({n for names in files.values() for n in names if n.startswith("compacted-")}) == 2
    assert plan_compaction(store).sweeps == () and plan_compaction(store).settled == ("s1", "s2")


def test_compacted_files_are_sorted_with_their_trial_ids_in_the_footer(store, write, rows):
    fill(store, write, rows)
    compact_all(store)
    root = Path(store.local_root)
    (steps,) = (root / "steps" / "sweep_id=s1").glob("compacted-*.parquet")
    table = pq.read_table(steps)
    keys = list(zip(*(table.column(c).to_pylist() for c in ("trial_id", "iteration", "phase_index")), strict=True))
    assert keys == sorted(keys)
    meta = pq.read_metadata(steps).metadata
    assert json.loads(meta[COMPACTED_KEY.encode()]) == [f"s1-t{i}" for i in range(5)]  # sorted, the orphan left out
    assert table.schema.remove_metadata() == TABLES["steps"]
    (summaries,) = (root / "summaries" / "sweep_id=s1").glob("compacted-*.parquet")
    assert pq.read_metadata(summaries).metadata[SUMMARY_VERSION_KEY.encode()] == str(SUMMARY_VERSION).encode()
    assert summaries.name == steps.name


def test_stored_summaries_equal_the_sql_that_computes_them_and_no_step_is_read_for_them(store, write, rows):
    fill(store, write, rows)
    compact_all(store)
    con = connect(store)
    stored = con.execute("select * from summaries order by all").fetchall()
    names = [c[0] for c in con.description]
    assert len(stored) == 10 * 9  # step, six phases, compute, forward_loss
    # The fast path: no compacted step is read for a summary; the orphan's (loose) steps are
    # there, and the views' commit rule hides them.
    assert con.execute("select distinct trial_id from raw_steps_unsummarized").fetchall() == [("orphan",)]
    assert con.execute("select count(*) from computed_summaries").fetchone() == (0,)
    listings = {table: store.table_files(table) for table in TABLES}
    computed = open_listed(store, listings, stored_summaries=False).con
    assert computed.execute("select count(*) from raw_summaries").fetchone() == (0,)
    recomputed = computed.execute("select * from computed_summaries order by all").fetchall()
    stddev = names.index("stddev")
    assert [r[:stddev] + r[stddev + 1:] for r in recomputed] == [r[:stddev] + r[stddev + 1:] for r in stored]
    assert same(recomputed, stored)  # stddev: see same()


def test_a_stored_summary_is_what_numpy_computes(store, write, rows):
    write.sweep("s1")
    d = durations(3, 11, outlier_at=7)
    d["backward"][7] = 90.0  # a second phase's outlier, in the same step
    steps = rows.steps("s1", "t1", d, warmup=2)
    for i, row in enumerate(steps):
        row.update(peak_allocated_bytes=1000 + 37 * i, peak_reserved_bytes=4096 + i % 5, peak_rss_bytes=10**6 - i,
                   alloc_retries=i % 2, gpu_gap_ms=(i % 7) / 4)
    store.write_trial("s1", "t1", rows.trial("s1", "t1"), steps)
    compact_sweep(store, "s1")
    con = connect(store)
    names = [c[0] for c in con.execute("select * from summaries limit 0").description]
    stored = {r[2]: dict(zip(names, r, strict=True)) for r in con.execute("select * from summaries").fetchall()}

    measured = [r for r in steps if not r["is_warmup"]]
    by_metric = {phase: [r for r in measured if r["phase"] == phase] for phase in PHASES}
    parts = {"step": PHASES, "compute": ("forward", "loss", "backward"), "forward_loss": ("forward", "loss")}
    for name, phases in parts.items():
        by_metric[name] = [[r for r in measured if r["iteration"] == i and r["phase"] in phases] for i in range(2, 11)]
    assert sorted(stored) == sorted(by_metric)
    for metric, items in by_metric.items():
        if metric in parts:  # per step, those phases summed; peaks the highest, retries summed
            ms = np.array([sum(r["duration_ms"] for r in step) for step in items])
            host = np.array([sum(r["host_ms"] for r in step) for step in items])
            gap = np.array([sum(r["gpu_gap_ms"] for r in step) for step in items])
            flat = [r for step in items for r in step]
        else:
            ms, host, gap = (np.array([r[c] for r in items]) for c in ("duration_ms", "host_ms", "gpu_gap_ms"))
            flat = items
        n = len(ms)
        mad = np.median(np.abs(ms - np.median(ms)))
        size = math.ceil(n ** (1 / 3))
        blocks = [ms[b * size:(b + 1) * size] for b in range(n // size - 1)] + [ms[(n // size - 1) * size:]]
        want = {
            "steps": n, "p50": np.percentile(ms, 50), "p10": np.percentile(ms, 10), "p90": np.percentile(ms, 90),
            "mean": ms.mean(), "stddev": ms.std(ddof=1), "min": ms.min(), "max": ms.max(),
            "outliers": int(np.sum(np.abs(ms - np.median(ms)) > 3 * 1.4826 * mad)),
            "block_p50": [float(np.median(b)) for b in blocks],
            "host_p50": np.median(host), "gpu_gap_p50": np.median(gap),
            "peak_allocated_bytes": max(r["peak_allocated_bytes"] for r in flat),
            "peak_reserved_bytes": max(r["peak_reserved_bytes"] for r in flat),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in flat),
            "alloc_retries": sum(r["alloc_retries"] for r in flat),
        }
        want["durations_ms"] = list(ms) if metric == "step" else None
        got = stored[metric]
        assert got["durations_ms"] == want.pop("durations_ms")
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12), (metric, key)
    assert stored["step"]["outliers"] >= 1 and stored["forward"]["outliers"] >= 1 and stored["backward"]["outliers"] >= 1
    assert len(stored["step"]["block_p50"]) == 3  # 9 measured steps: 3 blocks of ceil(9^(1/3)) = 3


def crash_store(store: Store, write, rows) -> None:
    """A compacted sweep and what came after it: a retried trial (new rows, no devices row
    where the first attempt had one), a new trial, a retry that never committed (steps only),
    and an orphan."""
    write.sweep("s1")
    for i in range(3):
        write.trial("s1", f"t{i}", durations(i, 5), warmup=1)
    store.write("devices", "s1", "t0", [rows.device("s1", "t0", "GPU-first-attempt")])
    compact_sweep(store, "s1")
    write.trial("s1", "t0", durations(7, 6), warmup=1, attempt=2)
    write.trial("s1", "t3", durations(8, 5), warmup=1)
    store.write("devices", "s1", "t3", [rows.device("s1", "t3", "CPU-t3")])
    store.write("steps", "s1", "t2", rows.steps("s1", "t2", {"forward": [50.0, 50.0]}))
    store.write("steps", "s1", "orphan", rows.steps("s1", "orphan", {"forward": [9.0]}))


@pytest.mark.slow  # about 20 s: 13 stops, each read back
def test_a_compaction_stopped_after_any_step_reads_the_same_and_the_next_one_finishes(store, write, rows, tmp_path):
    crash_store(store, write, rows)
    expected = snapshot(store)
    # What the store reads before: the retry's rows (not the compacted first attempt's, nor
    # its device), the compacted t2 (not its uncommitted steps), t3.
    assert [(r[1], r[4]) for r in expected["trials"]] == [("t0", 2), ("t1", 1), ("t2", 1), ("t3", 1)]
    assert "GPU-first-attempt" not in {r[2] for r in expected["devices"]}
    assert 50.0 not in {r[6] for r in expected["steps"] if r[1] == "t2"}

    done: list[str] = []
    full = Store(str(tmp_path / "full"))
    shutil.copytree(store.local_root, full.local_root)
    compact_sweep(full, "s1", after_step=done.append)
    # steps, devices, summaries, trials; t0's trials and steps files, t3's trials, steps and
    # devices files; the first compaction's four files.
    assert [s.split()[0] for s in done] == ["wrote"] * 4 + ["deleted"] * 9
    assert [Path(s).name for s in done[4:9]] == ["t0.parquet", "t0.parquet", "t3.parquet", "t3.parquet", "t3.parquet"]
    assert same(snapshot(full), expected)

    for k in range(1, len(done) + 1):
        copy = Store(str(tmp_path / f"stop-{k}"))
        shutil.copytree(store.local_root, copy.local_root)

        def stop_at(what: str, k=k, seen=[]) -> None:  # noqa: B006 (a counter per k)
            seen.append(what)
            if len(seen) == k:
                raise Stop(what)

        with pytest.raises(Stop):
            compact_sweep(copy, "s1", after_step=stop_at)
        assert same(snapshot(copy), expected), f"after step {k}: {done[k - 1]}"
        if k not in (1, 4, 5, 7, 10):  # the others are like one of these
            continue
        compact_sweep(copy, "s1")
        assert same(snapshot(copy), expected), f"recompacted after step {k}"
        files = data_files(copy)
        assert all(len(files[t]) == 1 and files[t][0].startswith("compacted-") for t in ("trials", "summaries"))
        # Loose files left: the two that never committed, and those of a trial whose trials file
        # the stopped compaction had deleted: leftovers that store clean removes.
        loose = {f"{t}/{n}" for t in ("steps", "devices") for n in files[t] if not n.startswith("compacted-")}
        fs, root = copy.filesystem()
        orphans = {str(Path(x.path).relative_to(Path(root))).replace("sweep_id=s1/", "")
                   for x in inspect_store(fs, root).leftovers}
        assert loose == orphans and {"steps/orphan.parquet", "steps/t2.parquet"} <= loose
        assert len(loose) == 2 + {5: 1, 7: 2, 8: 1}.get(k, 0), f"after step {k}"


def test_a_trial_rewritten_after_compaction_is_read_from_its_new_files(store, write, rows):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [1.0, 1.0, 1.0]}, status="failed", error="boom")
    write.trial("s1", "t2", {"forward": [2.0, 2.0]})
    compact_sweep(store, "s1")
    write.trial("s1", "t1", {"forward": [3.0, 3.0]}, attempt=2)  # the retry, after the compaction
    con = connect(store)
    assert con.execute("select trial_id, status, attempt from trials order by 1").fetchall() == [
        ("t1", "ok", 2), ("t2", "ok", 1)]
    assert con.execute("select distinct duration_ms from steps where trial_id = 't1' and phase = 'forward'"
                       ).fetchall() == [(3.0,)]
    # t1's summary is computed from its new steps; t2's is the stored one.
    assert con.execute("select trial_id, p50 from trial_summaries where metric = 'forward' order by 1").fetchall() == [
        ("t1", 3.0), ("t2", 2.0)]
    assert con.execute("select distinct trial_id from summaries").fetchall() == [("t2",)]
    assert con.execute("select distinct trial_id from unsummarized_steps").fetchall() == [("t1",)]
    assert [(r["trial_id"], r["attempt"]) for r in sorted(store.read_rows("trials", ["trial_id", "attempt"]),
                                                           key=lambda r: r["trial_id"])] == [("t1", 2), ("t2", 1)]
    before = snapshot(store)
    compact_sweep(store, "s1")
    assert same(snapshot(store), before)


def test_a_loose_steps_file_of_a_compacted_trial_without_its_trials_file_is_not_read(store, write, rows):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [2.0, 2.0]})
    compact_sweep(store, "s1")
    # A new attempt that died before its trials file: its steps file is not t1's rows.
    store.write("steps", "s1", "t1", rows.steps("s1", "t1", {"forward": [7.0, 7.0, 7.0]}))
    con = connect(store)
    assert con.execute("select count(*), max(duration_ms) from steps").fetchone() == (12, 2.0)
    assert sorted({r["duration_ms"] for r in store.read_rows("steps", ["duration_ms"])}) == [1.0, 2.0]
    fs, root = store.filesystem()
    report = inspect_store(fs, root)
    assert report.skipped == ()
    assert [(Path(x.path).parent.parent.name, Path(x.path).name, x.kind) for x in report.leftovers] == [
        ("steps", "t1.parquet", "orphan")]


def test_store_check_and_clean_leave_compacted_files_alone(store, write, rows, cli_runner):
    crash_store(store, write, rows)
    compact_sweep(store, "s1")
    check = cli_runner("store", "check", "--store", store.location)
    assert "steps: 3 file(s) read (1 compacted), 0 skipped" in check.output
    assert "summaries: 1 file(s) read (1 compacted), 0 skipped" in check.output
    assert "skipped" not in check.output.replace(", 0 skipped", "")
    orphans = sorted(line.rsplit("/", 1)[1] for line in check.output.splitlines() if "leftover (orphan" in line)
    assert orphans == ["orphan.parquet", "t2.parquet"]
    expected = snapshot(store)
    clean = cli_runner("store", "clean", "--older-than", "0", "--store", store.location)
    assert clean.exit_code == 0 and "removed 2 leftover file(s)" in clean.output
    assert same(snapshot(store), expected)
    assert all(n.startswith("compacted-") for names in data_files(store).values() for n in names)


def test_a_second_compaction_merges_into_one_file_per_table(store, write, rows):
    write.sweep("s1")
    write.trial("s1", "t1", durations(1, 4))
    compact_sweep(store, "s1")
    write.trial("s1", "t2", durations(2, 4))
    assert [w.sweep_id for w in plan_compaction(store, "latest").sweeps] == ["s1"]
    before = snapshot(store)
    done = compact_sweep(store, "s1")
    assert (done.trials, done.files_before, done.files_after) == (2, 6, 4)
    assert same(snapshot(store), before)
    files = data_files(store)
    assert all(len(names) == 1 for names in files.values())
    (trials,) = Path(store.local_root).glob("trials/sweep_id=s1/*.parquet")
    assert json.loads(pq.read_metadata(trials).metadata[COMPACTED_KEY.encode()]) == ["t1", "t2"]


def rewrite(path: Path, table: pa.Table | None = None, **metadata: str | None) -> None:
    """Rewrite the Parquet file at `path`: its rows (or `table`), its footer's key-value
    metadata with `metadata` set (None: removed)."""
    old = pq.read_table(path)
    meta = dict(pq.read_metadata(path).metadata or {})  # the footer's (the writer adds to it at its end)
    for key, value in metadata.items():
        meta.pop(key.encode(), None)
        if value is not None:
            meta[key.encode()] = value.encode()
    data = (table if table is not None else old).replace_schema_metadata(meta)
    pq.write_table(data, path)


@pytest.mark.parametrize("listed, reason", [
    (["t1", "t2", "t3"], "its footer's stepscope.compacted list names trial_id 't3', which its rows do not hold"),
    (["t1"], "its rows' trial_id ('t2') is not its footer's stepscope.compacted list"),
    (None, "a compacted file without a valid stepscope.compacted list in its footer"),
    ("not json", "a compacted file without a valid stepscope.compacted list in its footer"),
])
def test_a_compacted_file_whose_trial_list_does_not_fit_its_rows_is_skipped(store, write, listed, reason):
    write.sweep("s1")
    write.trial("s1", "t1")
    write.trial("s1", "t2")
    compact_sweep(store, "s1")
    (path,) = Path(store.local_root).glob("trials/sweep_id=s1/*.parquet")
    text = listed if listed is None or isinstance(listed, str) else json.dumps(listed)
    rewrite(path, **{COMPACTED_KEY: text})
    with pytest.warns(StoreWarning) as caught:
        con = connect(store)
    assert [str(w.message) for w in caught] == [f"skipped {path}: {reason}" + (
        ": a copy or a file stepscope did not write" if "rows'" in reason else
        ": not a file stepscope wrote" if "names" in reason else ": not one stepscope wrote")]
    assert con.execute("select count(*) from trials").fetchone() == (0,)
    assert store.read_rows("trials", ["trial_id"]) == []


def test_a_loose_summaries_file_is_skipped(store, write):
    write.sweep("s1")
    write.trial("s1", "t1")
    compact_sweep(store, "s1")
    (path,) = Path(store.local_root).glob("summaries/sweep_id=s1/*.parquet")
    loose = path.with_name("t1.parquet")
    shutil.copy(path, loose)
    with pytest.warns(StoreWarning, match=r"t1\.parquet: the summaries table holds only the files `stepscope "
                                          r"compact` writes \(compacted-\*\.parquet\)"):
        con = connect(store)
    assert con.execute("select count(*) from summaries").fetchone() == (9,)


def test_summaries_of_another_version_are_not_read_until_compacted_again(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [1.0, 2.0, 4.0]})
    compact_sweep(store, "s1")
    expected = snapshot(store)
    (path,) = Path(store.local_root).glob("summaries/sweep_id=s1/*.parquet")
    old = pq.read_table(path)
    old = old.set_column(old.schema.get_field_index("summary_version"), old.schema.field("summary_version"),
                         pa.array([SUMMARY_VERSION + 1] * old.num_rows, pa.int32()))
    old = old.set_column(old.schema.get_field_index("p50"), old.schema.field("p50"), pa.array([-1.0] * old.num_rows))
    rewrite(path, old, **{SUMMARY_VERSION_KEY: str(SUMMARY_VERSION + 1)})

    with pytest.warns(StoreWarning, match=rf"^1 summaries file\(s\) of summary version {SUMMARY_VERSION + 1}, not "
                                          rf"{SUMMARY_VERSION}, are not read .*run stepscope compact to refresh them"):
        con = connect(store)
    assert con.execute("select count(*) from summaries").fetchone() == (0,)
    assert con.execute("select count(*) from raw_steps_unsummarized").fetchone() == (18,)
    assert con.execute("select p50 from trial_summaries where metric = 'forward'").fetchone() == (2.0,)
    assert [w.sweep_id for w in plan_compaction(store).sweeps] == ["s1"]
    compact_sweep(store, "s1")
    assert same(snapshot(store), expected)  # no warning (snapshot makes one an error), nothing stale left
    assert plan_compaction(store).sweeps == ()


def test_a_summaries_file_of_another_version_with_a_footer_that_disagrees_is_skipped(store, write):
    write.sweep("s1")
    write.trial("s1", "t1")
    compact_sweep(store, "s1")
    (path,) = Path(store.local_root).glob("summaries/sweep_id=s1/*.parquet")
    rewrite(path, **{SUMMARY_VERSION_KEY: str(SUMMARY_VERSION + 1)})
    with pytest.warns(StoreWarning, match=r"its rows' summary_version .* is not its footer's"):
        connect(store)


def test_resume_sees_compacted_trials_as_done(store, write, rows, write_spec):
    from stepscope.orchestrator.resume import pick_sweep
    from stepscope.orchestrator.spec import load_spec

    spec = load_spec(write_spec("name: demo\nfixed: {iterations: 1, warmup: 0}\ngrid: {workload: [mlp]}\n"))
    store.write_sweep(rows.sweep("s1", name=spec.name, spec_hash=spec.spec_hash))
    write.trial("s1", "ok1")
    write.trial("s1", "oom1", status="oom")
    write.trial("s1", "failed1", status="failed")
    write.trial("s1", "retried", status="failed")
    compact_sweep(store, "s1")
    write.trial("s1", "retried", attempt=2)  # ok on its second attempt, after the compaction
    write.trial("s1", "failed1", status="ok", attempt=1, ended_at=rows.T0 - timedelta(days=1))
    chosen = pick_sweep(store, spec, sweep_id=None, resume=True)
    assert chosen.sweep_id == "s1" and not chosen.new
    # failed1's loose rewrite is read, whatever its attempt: it is the trial's file now, as the views say.
    assert chosen.done_ids == {"ok1", "oom1", "retried", "failed1"}
    con = connect(store)
    assert {r[0] for r in con.execute("select trial_id from trials where status in ('ok', 'oom')").fetchall()} == \
        chosen.done_ids


def test_the_compact_command(store, write, rows, cli_runner, tmp_path):
    fill(store, write, rows)
    dry = cli_runner("compact", "--store", store.location, "--dry-run")
    assert dry.exit_code == 0
    assert dry.output.splitlines() == ["s1: 5 trials, 16 files -> 5 (dry run: nothing written)",
                                       "s2: 5 trials, 15 files -> 4 (dry run: nothing written)"]
    assert data_files(store)["trials"].count("s1-t0.parquet") == 1
    run = cli_runner("compact", "--store", store.location, "--sweep", "latest")
    assert run.exit_code == 0
    (line,) = run.output.splitlines()
    assert line.startswith("s2: 5 trials, 15 files -> 4, 325 rows, ") and line.endswith(" s")
    again = cli_runner("compact", "--store", store.location)
    assert again.exit_code == 0 and again.output.splitlines()[-1] == "1 sweep(s) with nothing to compact: s2"
    assert again.output.splitlines()[0].startswith("s1: 5 trials, 16 files -> 5, ")  # its orphan stays
    missing = cli_runner("compact", "--store", str(tmp_path / "nothing"))
    assert missing.exit_code == 2
    assert missing.output.startswith(f"Error: --store {tmp_path / 'nothing'}: no store there")
    unknown = cli_runner("compact", "--store", store.location, "--sweep", "s9")
    assert unknown.exit_code == 2
    assert unknown.output == "Error: --sweep s9: no such sweep in the store; use latest, all, or one of: s2, s1\n"


def test_a_store_path_with_glob_characters_reads_compacted_files_through_pyarrow(tmp_path, rows):
    # DuckDB would read a glob character in a path as a pattern: these files go through pyarrow,
    # the excluded trials by a filter on the dataset.
    store = Store(str(tmp_path / "odd [store]"))
    store.write_sweep(rows.sweep("s1"))
    for trial_id in ("t1", "t2"):
        store.write_trial("s1", trial_id, rows.trial("s1", trial_id), rows.steps("s1", trial_id, {"forward": [2.0]}))
    compact_sweep(store, "s1")
    store.write_trial("s1", "t1", rows.trial("s1", "t1", attempt=2), rows.steps("s1", "t1", {"forward": [5.0]}))
    con = connect(store)
    assert con.execute("select trial_id, attempt from trials order by 1").fetchall() == [("t1", 2), ("t2", 1)]
    assert con.execute("select trial_id, duration_ms from steps where phase = 'forward' order by 1").fetchall() == [
        ("t1", 5.0), ("t2", 2.0)]


def test_an_s3_store_compacts_and_reads_its_compacted_files(s3_store, s3_server, s3_bucket, rows):
    store = Store(s3_store)
    store.write_sweep(rows.sweep("s1"))
    for trial_id in ("t1", "t2"):
        store.write_trial("s1", trial_id, rows.trial("s1", trial_id), rows.steps("s1", trial_id, durations(1, 3)),
                          [rows.device("s1", trial_id, f"CPU-{trial_id}")])
    before = snapshot(store)
    done = compact_sweep(store, "s1")
    assert (done.trials, done.files_before, done.files_after) == (2, 6, 4)
    assert same(snapshot(store), before)
    keys = [k.removeprefix("results/") for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")]
    (name,) = {k.rsplit("/", 1)[1] for k in keys if k.startswith("trials/")}
    assert sorted(keys) == sorted([f"{t}/sweep_id=s1/{name}" for t in ("devices", "steps", "summaries", "trials")]
                                  + ["sweeps/sweep_id=s1/sweep.parquet"])
    assert s3_server.uploads(s3_bucket) == []
    # A retry after the compaction: its compacted rows are filtered out of the pyarrow dataset.
    store.write_trial("s1", "t1", rows.trial("s1", "t1", attempt=2), rows.steps("s1", "t1", {"forward": [5.0]}))
    con = connect(store)
    assert con.execute("select trial_id, attempt from trials order by 1").fetchall() == [("t1", 2), ("t2", 1)]
    assert con.execute("select trial_id, count(*) from steps group by 1 order by 1").fetchall() == [
        ("t1", 6), ("t2", 18)]
    assert con.execute("select count(*) from summaries where trial_id = 't1'").fetchone() == (0,)
    assert sorted((r["trial_id"], r["attempt"]) for r in store.read_rows("trials", ["trial_id", "attempt"])) == [
        ("t1", 2), ("t2", 1)]
