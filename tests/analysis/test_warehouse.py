"""stepscope.analysis.warehouse: raw relations over real Parquet files, and the views over them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import stepscope.analysis.warehouse
from stepscope.analysis.queries import list_queries, views_sql
from stepscope.analysis.warehouse import connect
from stepscope.storage.schema import TABLES
from stepscope.storage.store import Store, StoreError

VIEWS = ("sweeps", "trials", "steps", "devices")


def columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"select * from {relation} limit 0").description]


def count(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    return con.execute(f"select count(*) from {relation}").fetchone()[0]


def test_a_store_that_does_not_exist_gives_empty_views_with_every_column(store):
    con = connect(store.location)
    for view in VIEWS:
        assert columns(con, view) == TABLES[view].names
        assert count(con, view) == 0
    assert count(con, "step_totals") == 0


def test_an_empty_store_directory_gives_empty_views(tmp_path):
    con = connect(str(tmp_path))
    assert [count(con, view) for view in VIEWS] == [0, 0, 0, 0]


def test_a_store_that_is_a_file_is_a_store_error(tmp_path):
    path = tmp_path / "results.parquet"
    path.write_bytes(b"not a store")
    with pytest.raises(StoreError, match=r"results\.parquet: is a file, not a directory"):
        connect(str(path))


def test_views_read_only_columns_of_the_schema():
    # Raw relations of exactly stepscope.storage.schema: a view (or a named query) that reads
    # a column the writer does not write fails to bind here.
    con = duckdb.connect()
    for table, schema in TABLES.items():
        con.register(f"raw_{table}", schema.empty_table())
    con.register("raw_steps_unsummarized", TABLES["steps"].empty_table())
    con.execute(views_sql())
    for view in (*VIEWS, "step_totals", "trial_summaries"):
        con.execute(f"select * from {view}").fetchall()
    for query in list_queries():
        params = {p.name: p.default or "x" for p in query.parameters}
        con.execute(query.path.read_text(), params).fetchall()


def test_views_show_every_column_of_the_schema_with_its_type(store):
    con = connect(store)
    for view in VIEWS:
        missing = set(TABLES[view].names) - set(columns(con, view))
        assert not missing, f"queries/views.sql: view {view} lacks {sorted(missing)}"
    types = dict(con.execute("select column_name, column_type from (describe trials)").fetchall())
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["batch_size"] == "BIGINT"


def test_rows_written_by_the_store_read_back(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [2.0, 3.0]}, warmup=1)
    con = connect(store)
    assert con.execute("select sweep_id, name from sweeps").fetchall() == [("s1", "demo")]
    assert con.execute("select trial_id, status from trials").fetchall() == [("t1", "ok")]
    assert count(con, "steps") == 2 * 6
    totals = con.execute(
        "select iteration, is_warmup, duration_ms, host_ms, phase_count from step_totals order by 1"
    ).fetchall()
    assert totals == [(0, True, 7.0, 10.0, 6), (1, False, 8.0, 11.0, 6)]


def test_steps_without_a_trials_row_are_invisible(store, write, rows):
    write.trial("s1", "t1", {"forward": [2.0]})
    # An interrupted write: the steps file landed, its committing trials row did not.
    store.write("steps", "s1", "t2", rows.steps("s1", "t2", {"forward": [9.0]}))
    con = connect(store)
    assert count(con, "raw_steps") == 12
    assert con.execute("select distinct trial_id from steps").fetchall() == [("t1",)]
    assert con.execute("select distinct trial_id from step_totals").fetchall() == [("t1",)]


def test_a_file_of_an_older_schema_reads_with_nulls_for_new_columns(store, write, rows):
    old = rows.trial("s1", "old", trial_index=1)
    del old["final_loss"], old["samples_per_s"]
    old_schema = pa.schema([f for f in TABLES["trials"] if f.name in old])
    directory = store.local_root + "/trials/sweep_id=s1"
    write.trial("s1", "new", trial_index=0)
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), f"{directory}/old.parquet")
    con = connect(store)
    got = con.execute(
        "select trial_id, final_loss, samples_per_s from trials order by trial_index"
    ).fetchall()
    assert got == [("new", 0.5, 480.0), ("old", None, None)]


def test_a_column_no_file_has_yet_is_still_there(store, rows):
    old = rows.trial("s1", "old")
    del old["final_loss"]
    schema = pa.schema([f for f in TABLES["trials"] if f.name in old])
    directory = f"{store.local_root}/trials/sweep_id=s1"
    pafs.LocalFileSystem().create_dir(directory)
    pq.write_table(pa.Table.from_pylist([old], schema=schema), f"{directory}/old.parquet")
    con = connect(store)
    assert con.execute("select trial_id, final_loss from trials").fetchall() == [("old", None)]
    assert columns(con, "trials") == TABLES["trials"].names


class SubTreeStore(Store):
    """A store reached through a pyarrow filesystem, as a URI store is (s3://...)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "local_root", None)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.SubTreeFileSystem(self.location, pafs.LocalFileSystem()), "prefix"


def test_a_uri_store_reads_through_its_pyarrow_filesystem(tmp_path, rows):
    store = SubTreeStore(str(tmp_path))
    empty = connect(store)
    assert [count(empty, view) for view in VIEWS] == [0, 0, 0, 0]

    store.write_sweep(rows.sweep("s1"))
    store.write_trial(
        "s1", "t1", rows.trial("s1", "t1"), rows.steps("s1", "t1", {"forward": [2.0]})
    )
    store.write("steps", "s1", "orphan", rows.steps("s1", "orphan"))
    old = rows.trial("s1", "old", trial_index=1)
    del old["final_loss"]
    schema = pa.schema([f for f in TABLES["trials"] if f.name in old])
    pq.write_table(
        pa.Table.from_pylist([old], schema=schema),
        "prefix/trials/sweep_id=s1/old.parquet",
        filesystem=store.filesystem()[0],
    )
    con = connect(store)
    assert con.execute("select sweep_id from sweeps").fetchall() == [("s1",)]
    assert con.execute("select trial_id, final_loss from trials order by 1").fetchall() == [
        ("old", None),
        ("t1", 0.5),
    ]
    assert con.execute("select distinct trial_id from steps").fetchall() == [("t1",)]
    assert columns(con, "trials") == TABLES["trials"].names


@pytest.mark.slow  # a fresh interpreter
def test_analysis_imports_neither_ray_nor_torch_nor_click():
    code = (
        "import sys, stepscope.analysis.warehouse, stepscope.analysis.queries\n"
        "bad = {'ray', 'torch', 'click'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    repo = Path(stepscope.analysis.warehouse.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_a_store_path_with_glob_and_quote_characters(tmp_path, rows):
    store = Store(str(tmp_path / "it's [run] {1}*"))
    store.write_trial("s1", "t1", rows.trial("s1", "t1"), rows.steps("s1", "t1"))
    con = connect(store)
    assert con.execute("select trial_id from trials").fetchall() == [("t1",)]
    assert count(con, "steps") == 6


def test_devices_keeps_the_latest_committed_observation_of_each_device(store, rows):
    from datetime import timedelta

    h100 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
    for trial_id, minutes, clock in (("t1", 0, 1980), ("t2", 5, 1755)):
        store.write_trial(
            "s1", trial_id, rows.trial("s1", trial_id, device_kind="cuda", device_uuid=h100),
            rows.steps("s1", trial_id),
            [rows.device("s1", trial_id, h100, rows.T0 + timedelta(minutes=minutes), device_kind="cuda",
                         device_name="NVIDIA H100 80GB HBM3", gpu_variant="H100-SXM-80GB", sm_clock_mhz=clock)],
        )
    store.write_trial("s1", "t3", rows.trial("s1", "t3", device_uuid="CPU-worker"), rows.steps("s1", "t3"),
                      [rows.device("s1", "t3")])
    # A devices file whose trial never committed (its trials row is missing) is not seen.
    store.write("devices", "s1", "t4", [rows.device("s1", "t4", h100, rows.T0 + timedelta(hours=1), sm_clock_mhz=1)])
    con = connect(store.location)
    got = con.execute("select device_uuid, trial_id, gpu_variant, sm_clock_mhz from devices order by 1").fetchall()
    assert got == [("CPU-worker", "t3", None, None), (h100, "t2", "H100-SXM-80GB", 1755)]
    joined = con.execute(
        "select t.trial_id, d.gpu_variant from trials t join devices d using (device_uuid) order by 1"
    ).fetchall()
    assert joined == [("t1", "H100-SXM-80GB"), ("t2", "H100-SXM-80GB"), ("t3", None)]


def test_phase_order_is_the_schemas(store):
    from stepscope.storage.schema import PHASES

    con = connect(store.location)
    assert con.execute("select phase from phase_order order by phase_index").fetchall() == [(p,) for p in PHASES]
